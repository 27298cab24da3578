//! Request lines read with a bound: a line longer than the limit is refused as soon as the
//! limit is passed, never buffered whole (a client sending 100 MB without a newline costs the
//! daemon at most the limit).
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

#[derive(Debug)]
pub(crate) enum LineError {
    /// The line passed the limit before its newline.
    TooLong,
    /// Reading failed (the client reset the connection).
    Io,
}

/// The lines of a control connection, each at most `max` bytes (without the newline).
pub(crate) struct RequestLines<R> {
    inner: R,
    max: usize,
    /// The line read so far. Kept across calls, so `next_line` is cancel-safe (the events
    /// stream polls it in a `select!`).
    buf: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> RequestLines<R> {
    pub(crate) fn new(inner: R, max: usize) -> Self {
        Self { inner, max, buf: Vec::new() }
    }

    /// The next line without its newline (invalid UTF-8 replaced, so the parser says what is
    /// wrong); None when the client closed. A last line without a newline is a line.
    pub(crate) async fn next_line(&mut self) -> Result<Option<String>, LineError> {
        loop {
            let avail = self.inner.fill_buf().await.map_err(|_| LineError::Io)?;
            if avail.is_empty() {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                break;
            }
            let newline = avail.iter().position(|&b| b == b'\n');
            let part = &avail[..newline.unwrap_or(avail.len())];
            if self.buf.len() + part.len() > self.max {
                self.buf = Vec::new();
                return Err(LineError::TooLong);
            }
            self.buf.extend_from_slice(part);
            let used = newline.map_or(avail.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                break;
            }
        }
        let line = std::mem::take(&mut self.buf);
        Ok(Some(String::from_utf8(line).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &'static [u8], max: usize) -> RequestLines<tokio::io::BufReader<&'static [u8]>> {
        // A small buffer, so lines span several reads.
        RequestLines::new(tokio::io::BufReader::with_capacity(4, input), max)
    }

    #[tokio::test]
    async fn splits_lines_and_refuses_one_past_the_limit() {
        let mut l = lines(b"ping\n0123456789\nlast", 10);
        assert_eq!(l.next_line().await.unwrap().as_deref(), Some("ping"));
        assert_eq!(l.next_line().await.unwrap().as_deref(), Some("0123456789"));
        assert_eq!(l.next_line().await.unwrap().as_deref(), Some("last"));
        assert!(l.next_line().await.unwrap().is_none());

        let mut l = lines(b"01234567890\n", 10);
        assert!(matches!(l.next_line().await, Err(LineError::TooLong)));
        let mut l = lines(b"\xff\n", 10);
        assert_eq!(l.next_line().await.unwrap().as_deref(), Some("\u{fffd}"));
    }

    #[tokio::test]
    async fn a_huge_line_is_refused_after_reading_about_the_limit() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'x'; 1 << 16];
            let mut sent = 0usize;
            while sent < 64 << 20 && client.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        let mut l = RequestLines::new(tokio::io::BufReader::new(server), 1 << 20);
        assert!(matches!(l.next_line().await, Err(LineError::TooLong)));
        assert!(l.buf.capacity() == 0);
        drop(l); // the reader gives up: the writer's next write fails
        let sent = writer.await.unwrap();
        assert!(sent < 4 << 20, "the reader took {sent} bytes");
    }
}
