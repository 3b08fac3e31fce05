//! Splitting a tenant's output into lines without ever buffering more than one capped line:
//! the part of an overlong line beyond the cap is counted and thrown away as it arrives.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line as read: at most `max` bytes kept, the number of bytes dropped after them.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RawLine {
    pub bytes: Vec<u8>,
    pub dropped: u64,
}

impl RawLine {
    /// The text of the line: invalid UTF-8 replaced, a trailing `\r` removed, and a marker
    /// when part of it was dropped.
    pub fn into_text(mut self) -> String {
        if self.dropped == 0 && self.bytes.last() == Some(&b'\r') {
            self.bytes.pop();
        }
        let mut text = match String::from_utf8(self.bytes) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        };
        if self.dropped > 0 {
            text.push_str(&truncation_marker(self.dropped));
        }
        text
    }
}

pub(super) fn truncation_marker(dropped: u64) -> String {
    format!(" [tenement: line truncated, {dropped} more bytes dropped]")
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(super) fn cap_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut capped = text[..end].to_string();
    capped.push_str(&truncation_marker((text.len() - end) as u64));
    capped
}

pub(super) struct LineSplitter {
    max: usize,
    line: Vec<u8>,
    dropped: u64,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            max,
            line: Vec::new(),
            dropped: 0,
        }
    }

    /// The next line, `None` at end of input. A last line without `\n` is still a line.
    pub async fn next_line<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<Option<RawLine>> {
        loop {
            let chunk = reader.fill_buf().await?;
            if chunk.is_empty() {
                if self.line.is_empty() && self.dropped == 0 {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let newline = chunk.iter().position(|&byte| byte == b'\n');
            let content = &chunk[..newline.unwrap_or(chunk.len())];
            let room = self.max.saturating_sub(self.line.len());
            let kept = content.len().min(room);
            self.line.extend_from_slice(&content[..kept]);
            self.dropped += (content.len() - kept) as u64;
            let used = newline.map_or(chunk.len(), |at| at + 1);
            reader.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> RawLine {
        let line = RawLine {
            bytes: std::mem::take(&mut self.line),
            dropped: self.dropped,
        };
        self.dropped = 0;
        line
    }
}
