//! The response side's body relays, one per framing (RFC 9112 §6.3): bytes
//! move from the stream's `pending` chunks to `out` and leave in one
//! `writev` per batch ([`ResponseSide::fill`], [`ResponseSide::flush`]).

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::debug;

use tunnel_lib::http1::encode::{chunk_size_line, CHUNK_END, LAST_CHUNK};
use tunnel_lib::http1::ChunkedDecoder;

use super::{RelayError, ResponseSide};

impl<W: AsyncWrite + Unpin + Send> ResponseSide<W> {
    pub(super) async fn relay_length(&mut self, mut n: u64) -> Result<(), RelayError> {
        loop {
            while n > 0 {
                let Some(mut chunk) = self.pending.pop_front() else {
                    break;
                };
                if chunk.len() as u64 > n {
                    self.pending.push_front(chunk.split_off(n as usize));
                }
                n -= chunk.len() as u64;
                self.out.push(chunk);
            }
            self.flush().await?;
            if n == 0 {
                return Ok(());
            }
            if !matches!(self.fill().await, Ok(true)) {
                return Err(RelayError::Broken);
            }
        }
    }

    /// Relays chunked bytes as they are, using the decoder only to find
    /// where the body ends.
    pub(super) async fn relay_chunked(&mut self) -> Result<(), RelayError> {
        let limits = &self.state.config.http_limits;
        let mut dec = ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer);
        loop {
            while let Some(mut chunk) = self.pending.pop_front() {
                let used = match dec.advance(&chunk) {
                    Ok(p) => p.consumed,
                    Err(e) => {
                        debug!("local service sent bad chunked framing: {e}");
                        return Err(RelayError::Broken);
                    }
                };
                if dec.is_done() {
                    if used < chunk.len() {
                        self.pending.push_front(chunk.split_off(used));
                    }
                    self.out.push(chunk);
                    return self.flush().await;
                }
                self.out.push(chunk);
            }
            // Everything received so far is relayed: an event reaches the
            // visitor as soon as the app wrote it.
            self.flush().await?;
            if !matches!(self.fill().await, Ok(true)) {
                return Err(RelayError::Broken);
            }
        }
    }

    /// Relays a body that ends with the stream as chunks, one per piece
    /// read, and the last chunk at the end.
    pub(super) async fn relay_to_end_chunked(&mut self) -> Result<(), RelayError> {
        loop {
            for chunk in self.pending.drain(..).filter(|c| !c.is_empty()) {
                self.out.push(chunk_size_line(chunk.len()));
                self.out.push(chunk);
                self.out.push(Bytes::from_static(CHUNK_END));
            }
            self.flush().await?;
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => {
                    self.out.push(Bytes::from_static(LAST_CHUNK));
                    return self.flush().await;
                }
                Err(_) => return Err(RelayError::Broken),
            }
        }
    }

    pub(super) async fn relay_to_end(&mut self) -> Result<(), RelayError> {
        loop {
            self.out.extend(self.pending.drain(..));
            self.flush().await?;
            match self.fill().await {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(_) => return Err(RelayError::Broken),
            }
        }
    }
}
