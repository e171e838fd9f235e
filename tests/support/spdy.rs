//! A minimal SPDY/3.1 client for exec, as kubectl up to 1.29 speaks it to a
//! kubelet (through an apiserver that forwards the upgraded connection):
//! the HTTP upgrade, one stream per channel opened with SYN_STREAM (its
//! `streamtype` header compressed in the session's zlib stream), then the
//! server's DATA frames read back per stream until the error stream ends.
//! Just enough to prove the node API passes SPDY through.

use std::collections::HashMap;

use flate2::{Compress, Compression, FlushCompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const FLAG_FIN: u8 = 0x01;

/// The HTTP/1.1 upgrade request for `path`; returns the response head.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, path: &str, protocol: &str) -> std::io::Result<String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            break;
        }
        head.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A client session: stream IDs and the header compressor.
pub struct Session {
    next_id: u32,
    zlib: Compress,
}

impl Default for Session {
    fn default() -> Self {
        Self { next_id: 1, zlib: Compress::new(Compression::default(), true) }
    }
}

impl Session {
    /// SYN_STREAM with `streamtype: kind`; returns the stream ID.
    pub async fn open<S: AsyncWrite + Unpin>(&mut self, s: &mut S, kind: &str) -> std::io::Result<u32> {
        let id = self.next_id;
        self.next_id += 2;
        let mut block = Vec::new();
        block.extend_from_slice(&1u32.to_be_bytes());
        for part in ["streamtype", kind] {
            block.extend_from_slice(&(part.len() as u32).to_be_bytes());
            block.extend_from_slice(part.as_bytes());
        }
        let mut compressed = Vec::with_capacity(block.len() + 64);
        self.zlib.compress_vec(&block, &mut compressed, FlushCompress::Sync).map_err(std::io::Error::other)?;
        let len = 10 + compressed.len() as u32;
        let mut frame = vec![0x80, 0x03, 0x00, 0x01];
        frame.extend_from_slice(&len.to_be_bytes());
        frame[4] = 0; // flags
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&0u32.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&compressed);
        s.write_all(&frame).await?;
        Ok(id)
    }
}

/// Reads frames until stream `last` is finished (or the connection ends);
/// returns the data received per stream.
pub async fn read_until_fin<S: AsyncRead + Unpin>(s: &mut S, last: u32) -> std::io::Result<HashMap<u32, Vec<u8>>> {
    let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
    loop {
        let mut head = [0u8; 8];
        if let Err(e) = s.read_exact(&mut head).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(data) } else { Err(e) };
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await?;
        if head[0] & 0x80 != 0 {
            continue; // SYN_REPLY, SETTINGS, PING...: nothing this client needs
        }
        let id = u32::from_be_bytes([head[0] & 0x7f, head[1], head[2], head[3]]);
        data.entry(id).or_default().extend_from_slice(&payload);
        if id == last && flags & FLAG_FIN != 0 {
            return Ok(data);
        }
    }
}
