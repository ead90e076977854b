//! The request side's bodies: a declared length, chunked (decoded and
//! re-encoded canonically), and the raw relay after a 101. Each write goes
//! to the current stream (`RequestSide::up`).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::debug;

use tunnel_lib::http1::encode::{chunk_size_line, CHUNK_END, LAST_CHUNK};
use tunnel_lib::http1::{ChunkStep, ChunkedDecoder};
use tunnel_lib::io::LeanRead;

use super::{bad_body, too_large, RequestSide};
use crate::respond::ErrorPage;

impl<R: LeanRead> RequestSide<R> {
    pub(super) async fn write_upstream(&mut self, chunk: Bytes) -> Result<(), Option<ErrorPage>> {
        let up = self.up.as_mut().ok_or(None)?;
        up.write_counted(chunk).await.map_err(|_| None)
    }

    pub(super) async fn forward_length(&mut self, mut n: u64) -> Result<(), Option<ErrorPage>> {
        while n > 0 {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            let chunk = self.buf.split_to(take).freeze();
            n -= take as u64;
            self.write_upstream(chunk).await?;
        }
        Ok(())
    }

    /// Decodes the visitor's chunked body and re-encodes it canonically
    /// (sizes in hex, no extensions, trailers dropped).
    pub(super) async fn forward_chunked(&mut self) -> Result<(), Option<ErrorPage>> {
        let limits = &self.state.config.http_limits;
        let max_body = self.state.config.max_body;
        let mut dec = ChunkedDecoder::new(limits.max_chunk_ext, limits.max_trailer);
        let mut total = 0u64;
        loop {
            if self.buf.is_empty() {
                self.read_more().await?;
            }
            match dec.step(&self.buf) {
                Ok(ChunkStep::Data(0)) | Ok(ChunkStep::Framing(0)) => self.read_more().await?,
                Ok(ChunkStep::Data(n)) => {
                    total += n as u64;
                    if max_body.is_some_and(|m| total > m) {
                        return Err(Some(too_large(max_body)));
                    }
                    let data = self.buf.split_to(n).freeze();
                    let mut pieces = [chunk_size_line(n), data, Bytes::from_static(CHUNK_END)];
                    let up = self.up.as_mut().ok_or(None)?;
                    up.rule.metrics.bytes_in.inc_by(n as u64);
                    up.send
                        .write_all_chunks(&mut pieces)
                        .await
                        .map_err(|_| None)?;
                }
                Ok(ChunkStep::Framing(n)) => {
                    let _ = self.buf.split_to(n);
                }
                Ok(ChunkStep::Done(n)) => {
                    let _ = self.buf.split_to(n);
                    return self.write_upstream(Bytes::from_static(LAST_CHUNK)).await;
                }
                Err(e) => {
                    debug!(peer = %self.peer, "400: bad chunked body: {e}");
                    return Err(Some(bad_body(e)));
                }
            }
        }
    }

    /// After a 101: visitor bytes go upstream raw until either side closes.
    pub(super) async fn relay_upgraded(&mut self) {
        let Some(up) = self.up.as_mut() else { return };
        if !self.buf.is_empty()
            && up
                .order
                .write(&mut up.send, self.buf.split().freeze())
                .await
                .is_err()
        {
            return;
        }
        self.link.mid_body.store(true, Ordering::Relaxed);
        let ended = tunnel_lib::io::tcp_to_quic(&mut self.rd, &mut up.send, &mut up.order).await;
        // Raw mode: the FIN is the half-close; a failed relay is reset.
        self.set_mid_body(ended.is_err());
        if ended.is_ok() {
            self.up = None;
        }
    }
}
