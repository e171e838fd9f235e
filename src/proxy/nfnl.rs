//! nf_tables over netlink: the message writer and the socket. A
//! transaction is one batch (NFNL_MSG_BATCH_BEGIN, the messages,
//! NFNL_MSG_BATCH_END) sent in one `sendmsg`; the kernel applies all of it
//! or nothing. Only the last message asks for an acknowledgement: the
//! kernel reports every refused message and then that one, so a refusal is
//! named by the object its message was about, and a batch of a hundred
//! thousand messages does not cost a hundred thousand answers.
//!
//! Attributes are written straight into one buffer (nested ones get their
//! length when they close), which keeps a full sync of ten thousand
//! Services to a few milliseconds of encoding.

use std::os::fd::AsRawFd;

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NLA_F_NESTED: u16 = 0x8000;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_DELCHAIN: u16 = 5;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_NEWSET: u16 = 9;
pub const NFT_MSG_GETSET: u16 = 10;
pub const NFT_MSG_DELSET: u16 = 11;
pub const NFT_MSG_NEWSETELEM: u16 = 12;
pub const NFT_MSG_GETSETELEM: u16 = 13;
pub const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// A netlink attribute writer over one buffer. An attribute longer than
/// its 16-bit length can say is never sent: `overflow` marks the message,
/// and the batch refuses to go (a wrong length would make the kernel read
/// what follows as other attributes).
pub struct Writer<'a> {
    pub buf: &'a mut Vec<u8>,
    pub overflow: bool,
}

impl Writer<'_> {
    fn header(&mut self, kind: u16, len: usize) {
        self.overflow |= len > usize::from(u16::MAX);
        self.buf.extend((len as u16).to_ne_bytes());
        self.buf.extend(kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    pub fn bytes(&mut self, kind: u16, value: &[u8]) {
        self.header(kind, 4 + value.len());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A string with its terminating NUL, as the kernel's NLA_STRING wants.
    pub fn str(&mut self, kind: u16, value: &str) {
        self.header(kind, 5 + value.len());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    pub fn be32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn be64(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// A nested attribute: what `inner` writes, then its length.
    pub fn nest(&mut self, kind: u16, inner: impl FnOnce(&mut Writer)) {
        let at = self.buf.len();
        self.header(kind | NLA_F_NESTED, 0);
        let mut w = Writer { buf: self.buf, overflow: false };
        inner(&mut w);
        let inner_overflow = w.overflow;
        let len = self.buf.len() - at;
        self.overflow |= inner_overflow || len > usize::from(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }
}

/// One transaction being written: the messages with what each is about.
pub struct Batch {
    buf: Vec<u8>,
    nfproto: u8,
    first: u32,
    seq: u32,
    /// Sequence number → the caller's tag of the message (what it is
    /// about), for error reports.
    about: Vec<(u32, usize)>,
    messages: usize,
    /// The tag of the first message with an attribute too long to encode.
    too_long: Option<usize>,
}

fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, nfproto: u8, res_id: u16) -> usize {
    let at = buf.len();
    buf.extend(0u32.to_ne_bytes());
    buf.extend(kind.to_ne_bytes());
    buf.extend(flags.to_ne_bytes());
    buf.extend(seq.to_ne_bytes());
    buf.extend(0u32.to_ne_bytes());
    buf.extend([nfproto, 0]);
    buf.extend(res_id.to_be_bytes());
    at
}

fn close(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

impl Batch {
    /// A batch for the nf_tables family `nfproto` (NFPROTO_IPV4: 2,
    /// NFPROTO_IPV6: 10).
    pub fn new(nfproto: u8) -> Batch {
        let mut buf = Vec::with_capacity(1 << 16);
        let first = 1;
        let at = header(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, first, 0, NFNL_SUBSYS_NFTABLES);
        close(&mut buf, at);
        Batch { buf, nfproto, first, seq: first, about: Vec::new(), messages: 0, too_long: None }
    }

    /// Appends one nf_tables message `kind` whose attributes `attrs` writes;
    /// `tag` is handed back to describe it if the kernel refuses it.
    pub fn message(&mut self, kind: u16, flags: u16, tag: usize, attrs: impl FnOnce(&mut Writer)) {
        self.seq = self.seq.wrapping_add(1);
        let at = header(&mut self.buf, (NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | flags, self.seq, self.nfproto, 0);
        let mut w = Writer { buf: &mut self.buf, overflow: false };
        attrs(&mut w);
        let overflow = w.overflow;
        if overflow && self.too_long.is_none() {
            self.too_long = Some(tag);
        }
        close(&mut self.buf, at);
        self.about.push((self.seq, tag));
        self.messages += 1;
    }

    /// How many messages (besides begin and end).
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// The bytes written so far.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// The finished bytes (with NFNL_MSG_BATCH_END), the sequence number of
    /// the message that is acknowledged, and the descriptions.
    fn finish(mut self, end: bool) -> (Vec<u8>, u32, u32, Vec<(u32, usize)>) {
        // The last message asks for the acknowledgement that ends reading.
        let last = self.seq;
        if let Some(at) = last_message(&self.buf) {
            let flags = u16::from_ne_bytes([self.buf[at + 6], self.buf[at + 7]]) | NLM_F_ACK;
            self.buf[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        if end {
            let at = header(&mut self.buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.seq.wrapping_add(1), 0, NFNL_SUBSYS_NFTABLES);
            close(&mut self.buf, at);
        }
        (self.buf, self.first, last, self.about)
    }

    /// The bytes as they would be sent, for tests and the golden files.
    pub fn bytes(self) -> Vec<u8> {
        self.finish(true).0
    }
}

fn last_message(buf: &[u8]) -> Option<usize> {
    let mut off = 0;
    let mut last = None;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().ok()?) as usize;
        if len < 16 {
            return None;
        }
        last = Some(off);
        off += (len + 3) & !3;
    }
    last
}

/// A refusal by the kernel, naming what the refused message was about.
#[derive(Debug, thiserror::Error)]
pub enum NfError {
    #[error("the kernel refused {about}: {error}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { about: String, error: std::io::Error, detail: Option<String> },
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

impl NfError {
    /// The errno of a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NfError::Refused { error, .. } => error.raw_os_error(),
            NfError::Io(e) => e.raw_os_error(),
            NfError::Protocol(_) => None,
        }
    }
}

/// A netfilter netlink socket with extended acknowledgements and a
/// receive timeout.
pub struct Socket {
    sock: netlink_sys::Socket,
    /// The sequence number of the last request (answers to an earlier one
    /// that are still queued are told apart by theirs).
    seq: u32,
}

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;

fn setsockopt_int(fd: libc::c_int, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a valid socket and an int of the size given.
    let rc = unsafe { libc::setsockopt(fd, level, opt, (&value as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

impl Socket {
    pub fn open() -> std::io::Result<Socket> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let fd = sock.as_raw_fd();
        let tv = libc::timeval { tv_sec: 10, tv_usec: 0 };
        // SAFETY: a valid socket and a timeval of the size given.
        let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), size_of::<libc::timeval>() as u32) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Messages with refusals (best effort: older kernels lack it).
        let _ = setsockopt_int(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        // Dumps of a large table come in many parts; a big receive buffer
        // keeps the kernel from dropping them.
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
        // Above any batch's sequence numbers (a batch counts from 1).
        Ok(Socket { sock, seq: 0x8000_0000 })
    }

    /// Sends `batch` as one transaction. Err names the first refused
    /// message (`describe` of its tag); nothing took effect then.
    pub fn commit(&mut self, batch: Batch, describe: impl Fn(usize) -> String) -> Result<(), NfError> {
        self.send_batch(batch, true, describe)
    }

    /// Sends `batch` without its end: the kernel checks every message and
    /// the table it would make (as at a commit), then aborts — nothing
    /// changes (what `nft --check` does). Err names the first refusal.
    pub fn check(&mut self, batch: Batch, describe: impl Fn(usize) -> String) -> Result<(), NfError> {
        self.send_batch(batch, false, describe)
    }

    fn send_batch(&mut self, batch: Batch, end: bool, describe: impl Fn(usize) -> String) -> Result<(), NfError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(tag) = batch.too_long {
            return Err(NfError::Protocol(format!("{}: an attribute longer than netlink's 64 KiB; nothing was sent", describe(tag))));
        }
        let (bytes, first, last, about) = batch.finish(end);
        // The whole transaction goes in one send: make room for it, as nft
        // does (SO_SNDBUFFORCE; the proxy runs as root).
        let size = libc::c_int::try_from(bytes.len().saturating_add(1 << 16).max(1 << 20)).unwrap_or(libc::c_int::MAX);
        setsockopt_int(self.sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size)?;
        self.sock.send(&bytes, 0)?;
        let describe = |seq: u32| -> String {
            match about.binary_search_by_key(&seq, |(s, _)| *s) {
                Ok(i) => describe(about[i].1),
                Err(_) if seq == first => "the transaction".into(),
                Err(_) => format!("message {seq}"),
            }
        };
        let mut failure: Option<NfError> = None;
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            self.sock.recv(&mut buf, 0)?;
            for (kind, flags, seq, payload) in messages(&buf)? {
                if kind != NLMSG_ERROR || payload.len() < 4 {
                    continue;
                }
                let code = i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4]));
                if code != 0 && failure.is_none() {
                    failure = Some(NfError::Refused { about: describe(seq), error: std::io::Error::from_raw_os_error(-code), detail: ext_ack_message(flags, payload) });
                }
                if seq == last || (code != 0 && seq == first) {
                    return match failure {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
            }
        }
    }

    /// One request (not a dump) of family `nfproto`: Ok(true) when the
    /// kernel answers with the object, Ok(false) when it says there is none
    /// (ENOENT).
    pub fn get(&mut self, kind: u16, nfproto: u8, attrs: impl FnOnce(&mut Writer)) -> Result<bool, NfError> {
        Ok(self.exchange(kind, NLM_F_ACK, nfproto, attrs, "a lookup")?.is_some_and(|answers| !answers.is_empty()))
    }

    /// A dump request (GETTABLE, GETCHAIN, GETSET) of family `nfproto`;
    /// `attrs` may narrow it. Returns each answer's attributes; Ok(None)
    /// when the kernel says the object does not exist (ENOENT).
    pub fn dump(&mut self, kind: u16, nfproto: u8, attrs: impl FnOnce(&mut Writer)) -> Result<Option<Vec<Vec<u8>>>, NfError> {
        self.exchange(kind, NLM_F_DUMP | NLM_F_ACK, nfproto, attrs, "a listing")
    }

    /// Sends one request and collects the answers' attributes until the
    /// dump's end or the acknowledgement; None on ENOENT.
    fn exchange(&mut self, kind: u16, flags: u16, nfproto: u8, attrs: impl FnOnce(&mut Writer), about: &str) -> Result<Option<Vec<Vec<u8>>>, NfError> {
        let mut out = Vec::new();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let at = header(&mut out, (NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | flags, seq, nfproto, 0);
        let mut w = Writer { buf: &mut out, overflow: false };
        attrs(&mut w);
        if w.overflow {
            return Err(NfError::Protocol(format!("{about}: an attribute longer than netlink's 64 KiB")));
        }
        close(&mut out, at);
        self.sock.send(&out, 0)?;
        let mut answers = Vec::new();
        let mut buf = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            self.sock.recv(&mut buf, 0)?;
            for (k, flags, s, payload) in messages(&buf)? {
                if s != seq {
                    continue;
                }
                match k {
                    NLMSG_DONE => return Ok(Some(answers)),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(payload.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
                        return match code {
                            0 => Ok(Some(answers)),
                            c if c == -libc::ENOENT => Ok(None),
                            c => Err(NfError::Refused { about: about.into(), error: std::io::Error::from_raw_os_error(-c), detail: ext_ack_message(flags, payload) }),
                        };
                    }
                    _ => answers.push(payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }
}

/// The netlink messages in `buf`: type, flags, sequence number, payload.
fn messages(buf: &[u8]) -> Result<Vec<(u16, u16, u32, &[u8])>, NfError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(NfError::Protocol("a short nf_tables netlink answer".into()));
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or([0; 4]));
        out.push((kind, flags, seq, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// NLM_F_CAPPED (0x100): the echoed request is cut to its header.
/// NLM_F_ACK_TLVS (0x200): extended-ack attributes follow it.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & 0x200 == 0 || payload.len() < 20 {
        return None;
    }
    let echoed = if flags & 0x100 != 0 { 16 } else { u32::from_ne_bytes(payload[4..8].try_into().ok()?) as usize };
    let tlvs = payload.get(4 + ((echoed + 3) & !3)..)?;
    attributes(tlvs).into_iter().find(|(k, _)| *k == NLMSGERR_ATTR_MSG).map(|(_, v)| String::from_utf8_lossy(v).trim_end_matches('\0').to_string())
}

/// The attributes in `buf`: kind (without the nested flag) and value.
pub fn attributes(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & !NLA_F_NESTED;
        if len < 4 || off + len > buf.len() {
            break;
        }
        out.push((kind, &buf[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

/// A NUL-terminated string attribute's text.
pub fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_get_their_length_and_padding() {
        let mut buf = Vec::new();
        let mut w = Writer { buf: &mut buf, overflow: false };
        w.nest(3, |w| {
            w.str(1, "ab");
            w.be32(2, 7);
        });
        assert_eq!(buf.len(), 4 + 8 + 8);
        assert_eq!(u16::from_ne_bytes([buf[0], buf[1]]), 20);
        assert_eq!(u16::from_ne_bytes([buf[2], buf[3]]), 3 | NLA_F_NESTED);
        let inner = attributes(&buf);
        assert_eq!(inner.len(), 1);
        let fields = attributes(inner[0].1);
        assert_eq!(fields[0], (1, &b"ab\0"[..]));
        assert_eq!(fields[1], (2, &[0, 0, 0, 7][..]));
    }

    /// An attribute too long for its 16-bit length never reaches the
    /// kernel: the batch is refused with the message's description.
    #[test]
    fn an_attribute_too_long_for_netlink_is_refused_before_sending() {
        let mut b = Batch::new(2);
        b.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, 0, |w| w.str(1, "t"));
        b.message(NFT_MSG_NEWSETELEM, NLM_F_CREATE, 1, |w| {
            w.nest(3, |w| {
                for _ in 0..5000 {
                    w.nest(1, |w| w.bytes(1, &[0; 16]));
                }
            })
        });
        assert_eq!(b.too_long, Some(1));
        let mut sock = Socket::open().unwrap();
        let e = sock.commit(b, |tag| format!("message {tag}")).unwrap_err().to_string();
        assert!(e.contains("message 1: an attribute longer than netlink's 64 KiB; nothing was sent"), "{e}");
    }

    #[test]
    fn only_the_last_message_asks_for_an_acknowledgement() {
        let mut b = Batch::new(2);
        b.message(NFT_MSG_NEWTABLE, NLM_F_CREATE, 0, |w| w.str(1, "t"));
        b.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, 1, |w| w.str(1, "t"));
        let bytes = b.bytes();
        let msgs = messages(&bytes).unwrap();
        assert_eq!(msgs.iter().map(|m| m.0).collect::<Vec<_>>(), [0x10, 0xa00, 0xa03, 0x11]);
        assert_eq!(msgs.iter().map(|m| m.1 & NLM_F_ACK != 0).collect::<Vec<_>>(), [false, false, true, false]);
        assert_eq!(msgs.iter().map(|m| m.2).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }
}
