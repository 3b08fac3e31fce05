//! `tenement dashboard`: prints a one-time sign-in link to the web dashboard. When the API is
//! a unix socket (the default), it also opens a listener on 127.0.0.1 that forwards the
//! dashboard's pages to that socket, as `kubectl port-forward` does, until Ctrl-C.
//!
//! Only `/dashboard` paths are forwarded. The daemon sees these requests come from root on
//! its socket, but the dashboard never trusts socket credentials: every browser still signs
//! in, with the link or a token.

use std::{net::SocketAddr, path::Path};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::{body::Incoming, header::HeaderValue, server::conn::http1, service::service_fn};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixStream};

use super::{client::Client, remote::ServerOptions};
use crate::api::{address::ApiAddress, audit::FORWARDED_FOR, types::DashboardLink};
use crate::sockpath::SocketPath;

#[derive(clap::Args)]
pub struct DashboardArgs {
    /// Where the local forwarder listens (a loopback address; port 0 picks a free one)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDRESS:PORT")]
    pub listen: SocketAddr,
}

type ForwardBody = UnsyncBoxBody<Bytes, hyper::Error>;

pub fn run(args: &DashboardArgs, options: &ServerOptions, config: Option<&Path>) -> Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: the forwarder only listens on a loopback address (127.0.0.1 or ::1); \
             to reach the dashboard from elsewhere, set settings.api to a TCP address",
            args.listen
        );
    }
    let address =
        Client::resolve_address(options.server.as_deref(), config, options.token.is_some())?;
    let client = Client::new(address.clone(), options.token.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let link: DashboardLink = client
            .call(Method::POST, "/v1/dashboard/links", None::<&()>)
            .await
            .context("asking tenement for a sign-in link")?;
        let socket = match address {
            ApiAddress::Tcp(host_port) => {
                // The dashboard is reachable as it is: nothing to forward.
                println!("http://{host_port}{}", link.path);
                eprintln!(
                    "open the link within {}s; it signs in once",
                    link.expires_in_secs
                );
                return Ok(());
            }
            ApiAddress::Unix(socket) => socket,
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let local = listener.local_addr()?;
        println!("http://{local}{}", link.path);
        eprintln!(
            "forwarding http://{local}/dashboard to {} (open the link within {}s; it signs in \
             once); Ctrl-C to stop",
            socket.display(),
            link.expires_in_secs
        );
        serve(listener, socket).await
    })
}

async fn serve(listener: TcpListener, socket: std::path::PathBuf) -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(request, peer, socket.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    socket: std::path::PathBuf,
) -> Result<Response<ForwardBody>, std::convert::Infallible> {
    if !crate::dashboard::owns(request.uri().path()) {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "tenement dashboard forwards only /dashboard",
        ));
    }
    // The daemon believes this header only from root on its socket: it is the browser's
    // address in the audit log.
    if let Ok(value) = HeaderValue::from_str(&peer.to_string()) {
        request.headers_mut().insert(FORWARDED_FOR, value);
    }
    match send(request, &socket).await {
        Ok(response) => Ok(response.map(|body| body.boxed_unsync())),
        Err(err) => Ok(plain(
            StatusCode::BAD_GATEWAY,
            &format!("cannot reach tenement at {}: {err:#}", socket.display()),
        )),
    }
}

async fn send(request: Request<Incoming>, socket: &Path) -> Result<Response<Incoming>> {
    let stream = UnixStream::connect(&*SocketPath::new(socket)?).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender.send_request(request).await?)
}

fn plain(status: StatusCode, text: &str) -> Response<ForwardBody> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}
