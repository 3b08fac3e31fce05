//! Sending one DNS message and reading its answer, over UDP (queries) or TCP (updates,
//! which must not be lost or retried blindly).

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// Longest wait for one answer.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// One UDP query; the first datagram from `server` carrying the query's id is the answer.
pub(super) async fn udp_exchange(server: SocketAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(packet).await?;
    let mut buffer = vec![0u8; 4096];
    timeout(ANSWER_TIMEOUT, async {
        loop {
            let length = socket.recv(&mut buffer).await?;
            if length >= 2 && buffer[..2] == packet[..2] {
                return Ok(buffer[..length].to_vec());
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// One message over TCP with the two-byte length prefix of RFC 1035 section 4.2.2.
pub(super) async fn tcp_exchange(server: SocketAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    timeout(ANSWER_TIMEOUT, async {
        let mut stream = TcpStream::connect(server).await?;
        let length = u16::try_from(packet.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "message too large"))?;
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(packet);
        stream.write_all(&framed).await?;
        let answer_length = stream.read_u16().await?;
        let mut answer = vec![0u8; usize::from(answer_length)];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

/// `REFUSED`, `NOTAUTH`...: the mnemonics operators know from dig and nsupdate.
pub(super) fn rcode_name(code: hickory_proto::op::ResponseCode) -> String {
    format!("{code:?}").to_ascii_uppercase()
}
