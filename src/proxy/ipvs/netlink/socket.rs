//! The IPVS socket: the family resolved, requests sent in batches and the
//! kernel's answers read back, refusals reported per request.

use super::*;

/// Why talking to IPVS failed.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(
        "the kernel has no IPVS (generic netlink family \"IPVS\" not found): the ipvs proxy mode needs the kernel module ip_vs (and ip_vs_{scheduler} for the scheduler); load it with `modprobe ip_vs`"
    )]
    NoModule { scheduler: String },
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Decode(String),
    #[error("{op}: {error}")]
    Op { op: String, error: std::io::Error },
}

impl From<DecodeError> for IpvsError {
    fn from(e: DecodeError) -> Self {
        IpvsError::Decode(e.to_string())
    }
}

/// Requests per `sendmsg`: their acknowledgements and errors must fit the
/// socket's receive buffer.
pub(super) const BATCH: usize = 256;

/// An IPVS generic netlink socket.
pub struct Socket {
    sock: netlink_sys::Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens a socket and resolves the IPVS family; `NoModule` when the
    /// kernel has no IPVS.
    pub fn open(scheduler: &str) -> Result<Socket, IpvsError> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let _ = sock.set_rx_buf_sz(4 << 20);
        let mut s = Socket { sock, family: 0, seq: 0, buf: Vec::with_capacity(1 << 18) };
        let ctrl = GenlCtrl { cmd: GenlCtrlCmd::GetFamily, nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.into())] };
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(ctrl));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let replies: Vec<GenlMessage<GenlCtrl>> = match s.exchange(msg) {
            Ok(r) => r,
            Err(IpvsError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(IpvsError::NoModule { scheduler: scheduler.into() });
            }
            Err(e) => return Err(e),
        };
        s.family = replies
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| IpvsError::Decode("the controller did not name the IPVS family id".into()))?;
        Ok(s)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request and reads its replies until the acknowledgement
    /// or the end of a dump.
    fn exchange<T>(&mut self, mut msg: NetlinkMessage<T>) -> Result<Vec<T>, IpvsError>
    where
        T: netlink_packet_core::NetlinkSerializable + netlink_packet_core::NetlinkDeserializable + fmt::Debug,
    {
        let seq = self.next_seq();
        msg.header.sequence_number = seq;
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            self.sock.recv(&mut self.buf, 0)?;
            let mut off = 0;
            while off + 16 <= self.buf.len() {
                let len = u32::from_ne_bytes(self.buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                if len < 16 || off + len > self.buf.len() {
                    return Err(IpvsError::Decode(format!("a netlink message of {len} bytes in a {}-byte read", self.buf.len())));
                }
                let reply = NetlinkMessage::<T>::deserialize(&self.buf[off..off + len]).map_err(|e| IpvsError::Decode(e.to_string()))?;
                off += (len + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(_) => return Err(IpvsError::Io(e.to_io())),
                    },
                    _ => {}
                }
            }
        }
    }

    fn ipvs(&self, m: IpvsMessage, flags: u16) -> NetlinkMessage<GenlMessage<IpvsMessage>> {
        let mut g = GenlMessage::from_payload(m);
        g.set_resolved_family_id(self.family);
        let mut msg = NetlinkMessage::from(g);
        msg.header.flags = flags;
        msg
    }

    /// Every virtual service nodelet could own (IPv4 and IPv6, by address).
    pub fn services(&mut self) -> Result<Vec<(ServiceKey, ServiceSpec)>, IpvsError> {
        let msg = self.ipvs(IpvsMessage { cmd: cmd::GET_SERVICE, attrs: vec![] }, NLM_F_REQUEST | NLM_F_DUMP);
        let mut out = Vec::new();
        for m in self.exchange(msg)? {
            if let Some(s) = parse_service(&m.payload)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// A virtual service's real servers with their connection counts.
    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<Dest>, IpvsError> {
        let req = IpvsMessage { cmd: cmd::GET_DEST, attrs: vec![Attr::nested(top::SERVICE, service_key_attrs(key))] };
        let msg = self.ipvs(req, NLM_F_REQUEST | NLM_F_DUMP);
        let mut out = Vec::new();
        for m in self.exchange(msg)? {
            if let Some(d) = parse_dest(&m.payload, af(&key.addr))? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Applies `ops` in order, `BATCH` requests per system call. Returns
    /// the operations the kernel refused, each with its error; the others
    /// took effect.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Vec<(usize, std::io::Error)>, IpvsError> {
        let mut refused = Vec::new();
        for (chunk_no, chunk) in ops.chunks(BATCH).enumerate() {
            let first = self.seq.wrapping_add(1);
            let mut out = Vec::new();
            for (i, op) in chunk.iter().enumerate() {
                // Only the last request asks for an acknowledgement; the
                // kernel answers a failed one all the same.
                let flags = if i + 1 == chunk.len() { NLM_F_REQUEST | NLM_F_ACK } else { NLM_F_REQUEST };
                let mut msg = self.ipvs(message(op), flags);
                msg.header.sequence_number = self.next_seq();
                msg.finalize();
                let at = out.len();
                out.resize(at + msg.buffer_len(), 0);
                msg.serialize(&mut out[at..]);
            }
            let last = self.seq;
            self.sock.send(&out, 0)?;
            'read: loop {
                self.buf.clear();
                self.sock.recv(&mut self.buf, 0)?;
                let mut off = 0;
                while off + 16 <= self.buf.len() {
                    let len = u32::from_ne_bytes(self.buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                    if len < 16 || off + len > self.buf.len() {
                        return Err(IpvsError::Decode(format!("a netlink message of {len} bytes in a {}-byte read", self.buf.len())));
                    }
                    let reply = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&self.buf[off..off + len])?;
                    off += (len + 3) & !3;
                    let seq = reply.header.sequence_number;
                    if let NetlinkPayload::Error(e) = reply.payload {
                        let index = seq.wrapping_sub(first) as usize;
                        if let Some(code) = e.code
                            && index < chunk.len()
                        {
                            let _ = code;
                            refused.push((chunk_no * BATCH + index, e.to_io()));
                        }
                        if seq == last {
                            break 'read;
                        }
                    }
                }
            }
        }
        Ok(refused)
    }
}

/// The wire bytes of one request (for the golden tests): netlink header
/// with sequence number 1 and the given family id, generic netlink header,
/// attributes.
pub fn wire(op: &Op, family: u16) -> Vec<u8> {
    let mut g = GenlMessage::from_payload(message(op));
    g.set_resolved_family_id(family);
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(g));
    msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    out
}
