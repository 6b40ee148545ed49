//! **Test double.** A recorded-reply stand-in for the hypercall transport, for tests where no
//! Xen is running. It is not Xen and emulates nothing: it replays a script.
//!
//! Each hypercall must match the next scripted [`Exchange`] by hypercall number and by command
//! (domctl/sysctl `cmd`, or the `XENVER_*` sub-op). The double then checks the buffer's
//! `interface_version`, its `domain`, and (if scripted) the bytes of the request payload, writes
//! the scripted reply into the buffer (payload, `domain`, and data behind guest handles such as
//! `get_device_group`'s `sdev_array`), records the call and returns the scripted value. Anything
//! else (an unscripted call, a wrong field, an address not inside a buffer it handed out) panics
//! with a message saying what differed, which fails the test.
//!
//! The double only reads and writes memory of buffers it allocated itself in
//! [`Transport::buffer`]; it finds them by address in its own table, so it needs no `unsafe`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{BufferMemory, HypercallBuffer, Transport};
use crate::abi::domctl::{self, Domctl, DomctlGetDomainInfo};
use crate::abi::sysctl::{self, Sysctl, SysctlPhysinfo};
use crate::abi::{
    bytes_of, from_bytes, version, Payload, Pod, HYPERVISOR_DOMCTL, HYPERVISOR_SYSCTL, HYPERVISOR_XEN_VERSION,
    PAYLOAD_LEN,
};
use crate::error::XenError;

/// One scripted hypercall: what the adapter must send, and what the double answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// Hypercall number (`__HYPERVISOR_*`).
    pub op: u64,
    /// domctl/sysctl `cmd`, or the `XENVER_*` sub-op (first argument) for `xen_version`.
    pub cmd: u64,
    /// Expected `interface_version` in the domctl/sysctl buffer (`None`: not checked).
    pub interface_version: Option<u32>,
    /// Expected `domain` in the domctl buffer (`None`: not checked).
    pub domain: Option<u16>,
    /// Expected leading bytes of the payload union (`None`: not checked).
    pub request: Option<Vec<u8>>,
    /// The value returned: `Ok(rc >= 0)` or `Err(errno)` for `-errno`.
    pub rc: Result<i64, i32>,
    /// Bytes written over the start of the payload union before returning.
    pub reply_payload: Option<Vec<u8>>,
    /// Value written to the domctl `domain` field before returning.
    pub reply_domain: Option<u16>,
    /// For each `(offset, bytes)`: `bytes` written at the address held in the 64-bit guest
    /// handle at `offset` in the payload union.
    pub handle_writes: Vec<(usize, Vec<u8>)>,
    /// `xen_version` only: bytes written at the address in the second argument.
    pub arg_write: Option<Vec<u8>>,
}

impl Exchange {
    fn new(op: u64, cmd: u64) -> Exchange {
        Exchange {
            op,
            cmd,
            interface_version: None,
            domain: None,
            request: None,
            rc: Ok(0),
            reply_payload: None,
            reply_domain: None,
            handle_writes: Vec::new(),
            arg_write: None,
        }
    }

    /// A `__HYPERVISOR_xen_version` call with sub-op `xenver`.
    pub fn xen_version(xenver: u64) -> Exchange {
        Exchange::new(HYPERVISOR_XEN_VERSION, xenver)
    }

    /// A domctl `cmd` on `domain`, expecting Xen 4.17's interface version.
    pub fn domctl(cmd: u32, domain: u16) -> Exchange {
        Exchange {
            interface_version: Some(domctl::INTERFACE_VERSION_4_17),
            domain: Some(domain),
            ..Exchange::new(HYPERVISOR_DOMCTL, u64::from(cmd))
        }
    }

    /// A sysctl `cmd`, expecting Xen 4.17's interface version.
    pub fn sysctl(cmd: u32) -> Exchange {
        Exchange {
            interface_version: Some(sysctl::INTERFACE_VERSION_4_17),
            ..Exchange::new(HYPERVISOR_SYSCTL, u64::from(cmd))
        }
    }

    /// Expects this `interface_version` instead.
    pub fn interface_version(mut self, v: u32) -> Exchange {
        self.interface_version = Some(v);
        self
    }

    /// Expects the payload union to start with the bytes of `request`.
    pub fn request<T: Pod>(mut self, request: &T) -> Exchange {
        self.request = Some(bytes_of(request).to_vec());
        self
    }

    /// Returns `rc` (>= 0).
    pub fn returns(mut self, rc: i64) -> Exchange {
        self.rc = Ok(rc);
        self
    }

    /// Returns `-errno`.
    pub fn fails(mut self, errno: i32) -> Exchange {
        self.rc = Err(errno);
        self
    }

    /// Writes `reply` over the start of the payload union.
    pub fn reply<T: Pod>(mut self, reply: &T) -> Exchange {
        self.reply_payload = Some(bytes_of(reply).to_vec());
        self
    }

    /// Writes `domain` to the domctl `domain` field.
    pub fn reply_domain(mut self, domain: u16) -> Exchange {
        self.reply_domain = Some(domain);
        self
    }

    /// Writes `bytes` behind the guest handle at payload offset `handle_offset`.
    pub fn write_handle(mut self, handle_offset: usize, bytes: Vec<u8>) -> Exchange {
        self.handle_writes.push((handle_offset, bytes));
        self
    }

    /// `xen_version` only: writes `bytes` at the address in the second argument.
    pub fn write_arg(mut self, bytes: Vec<u8>) -> Exchange {
        self.arg_write = Some(bytes);
        self
    }
}

/// A hypercall the double served, as decoded from its arguments and buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// Hypercall number.
    pub op: u64,
    /// Raw arguments.
    pub args: [u64; 5],
    /// domctl/sysctl `cmd`, or the `XENVER_*` sub-op.
    pub cmd: u64,
    /// `interface_version` of a domctl/sysctl buffer.
    pub interface_version: Option<u32>,
    /// `domain` of a domctl buffer, as sent.
    pub domain: Option<u16>,
    /// The payload union as sent.
    pub payload: Option<Payload>,
}

impl Call {
    /// The payload as sent, read as the union member `T`.
    pub fn payload_as<T: Pod>(&self) -> Option<T> {
        self.payload.as_ref().map(Payload::get)
    }
}

/// The recorded-reply test double. Clones share one script and one call log, so a test can
/// keep a clone to inspect after handing the other to [`crate::Xen::with_transport`].
#[derive(Clone, Default)]
pub struct Recorded {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Exchange>,
    calls: Vec<Call>,
    buffers: Vec<Weak<HeapMemory>>,
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("Recorded (test double)")
            .field("remaining", &st.script.len())
            .field("served", &st.calls.len())
            .finish()
    }
}

/// The capabilities the handshake's physinfo reports: hvm, pv, directio, gnttab v1 and v2
/// (what Xen 4.17 under QEMU TCG with an emulated VT-d reports).
pub const SAMPLE_CAPABILITIES: u32 = 0x307;

/// A plausible physinfo reply (one CPU, 1 GiB).
pub fn sample_physinfo() -> SysctlPhysinfo {
    SysctlPhysinfo {
        threads_per_core: 1,
        cores_per_socket: 1,
        nr_cpus: 1,
        max_cpu_id: 0,
        nr_nodes: 1,
        max_node_id: 0,
        cpu_khz: 2_000_000,
        capabilities: SAMPLE_CAPABILITIES,
        total_pages: 0x4_0000,
        free_pages: 0x2_0000,
        max_mfn: 0x4_0000,
        ..Default::default()
    }
}

/// A plausible getdomaininfo reply for dom0.
pub fn sample_dom0_info() -> DomctlGetDomainInfo {
    DomctlGetDomainInfo {
        domain: 0,
        flags: domctl::dominf::RUNNING,
        tot_pages: 0x1_0000,
        max_pages: 0x1_0000,
        nr_online_vcpus: 1,
        max_vcpu_id: 0,
        ..Default::default()
    }
}

impl Recorded {
    /// An empty script.
    pub fn new() -> Recorded {
        Recorded::default()
    }

    /// A script starting with the handshake of [`crate::Xen::with_transport`] against a
    /// well-behaved Xen 4.17 (see [`Recorded::handshake`]).
    pub fn xen_4_17() -> Recorded {
        let r = Recorded::new();
        r.expect_all(Recorded::handshake(4, 17));
        r
    }

    /// What [`crate::Xen::with_transport`] sends to a Xen `major.minor` that this adapter
    /// supports, with good answers: `XENVER_version`, a `XEN_SYSCTL_physinfo` probe
    /// ([`sample_physinfo`]) and a `XEN_DOMCTL_getdomaininfo` probe of dom0
    /// ([`sample_dom0_info`]).
    pub fn handshake(major: u32, minor: u32) -> Vec<Exchange> {
        vec![
            Exchange::xen_version(version::XENVER_VERSION).returns(i64::from(major << 16 | minor)),
            Exchange::sysctl(sysctl::cmd::PHYSINFO).reply(&sample_physinfo()),
            Exchange::domctl(domctl::cmd::GETDOMAININFO, 0).reply(&sample_dom0_info()).reply_domain(0),
        ]
    }

    /// Appends one exchange to the script.
    pub fn expect(&self, exchange: Exchange) -> &Recorded {
        self.lock().script.push_back(exchange);
        self
    }

    /// Appends exchanges to the script.
    pub fn expect_all(&self, exchanges: impl IntoIterator<Item = Exchange>) -> &Recorded {
        self.lock().script.extend(exchanges);
        self
    }

    /// The calls served so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The last call served.
    pub fn last_call(&self) -> Option<Call> {
        self.lock().calls.last().cloned()
    }

    /// Exchanges not yet consumed.
    pub fn remaining(&self) -> usize {
        self.lock().script.len()
    }

    /// Panics unless every scripted exchange was consumed.
    pub fn assert_done(&self) {
        let st = self.lock();
        assert!(
            st.script.is_empty(),
            "test double: {} scripted hypercall(s) never came, next: {:?}",
            st.script.len(),
            st.script.front()
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test while the lock was held poisons it; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The live buffer holding `[addr, addr + len)` and the offset of `addr` in it.
    fn region(&mut self, addr: u64, len: usize, what: &str) -> (Arc<HeapMemory>, usize) {
        self.buffers.retain(|w| w.strong_count() > 0);
        for mem in self.buffers.iter().filter_map(Weak::upgrade) {
            let start = mem.addr();
            if addr >= start && addr - start + len as u64 <= mem.len() as u64 {
                return (mem.clone(), (addr - start) as usize);
            }
        }
        panic!(
            "test double: {what} at {addr:#x} (+{len} bytes) is not inside a live buffer from \
             Transport::buffer()"
        );
    }

    fn read<T: Pod>(&mut self, addr: u64, what: &str) -> T {
        let (mem, off) = self.region(addr, size_of::<T>(), what);
        let mut tmp = vec![0u8; size_of::<T>()];
        mem.read_at(off, &mut tmp);
        from_bytes(&tmp).expect("exact size")
    }

    fn write(&mut self, addr: u64, bytes: &[u8], what: &str) {
        let (mem, off) = self.region(addr, bytes.len(), what);
        mem.write_at(off, bytes);
    }

    /// Checks the common header fields and the request bytes; returns the payload with the
    /// scripted reply applied.
    fn check_payload(exp: &Exchange, cmd: u32, iv: u32, payload: &Payload, what: &str) -> Payload {
        assert_eq!(u64::from(cmd), exp.cmd, "test double: {what}: cmd {cmd} sent, {} scripted", exp.cmd);
        if let Some(want) = exp.interface_version {
            assert_eq!(iv, want, "test double: {what}: interface_version {iv:#x} sent, {want:#x} expected");
        }
        if let Some(req) = &exp.request {
            assert_eq!(
                &payload.0[..req.len()],
                &req[..],
                "test double: {what}: request payload differs (sent, expected)"
            );
        }
        let mut out = *payload;
        if let Some(reply) = &exp.reply_payload {
            assert!(reply.len() <= PAYLOAD_LEN, "scripted reply is over 128 bytes");
            out.0[..reply.len()].copy_from_slice(reply);
        }
        out
    }

    fn write_handles(&mut self, exp: &Exchange, sent: &Payload, what: &str) {
        for (off, bytes) in &exp.handle_writes {
            let handle: u64 = from_bytes(&sent.0[*off..]).expect("handle offset inside payload");
            self.write(handle, bytes, what);
        }
    }
}

impl Transport for Recorded {
    fn hypercall(&self, op: u64, args: [u64; 5]) -> Result<i64, i32> {
        let mut st = self.lock();
        let Some(exp) = st.script.pop_front() else {
            panic!("test double: unscripted hypercall {op} with args {args:#x?}");
        };
        assert_eq!(op, exp.op, "test double: hypercall {op} sent, {} scripted ({exp:?})", exp.op);
        let call = match op {
            HYPERVISOR_XEN_VERSION => {
                assert_eq!(args[0], exp.cmd, "test double: XENVER sub-op {} sent, {} scripted", args[0], exp.cmd);
                if let Some(bytes) = &exp.arg_write {
                    st.write(args[1], bytes, "xen_version argument");
                }
                Call { op, args, cmd: args[0], interface_version: None, domain: None, payload: None }
            }
            HYPERVISOR_DOMCTL => {
                let what = domctl::cmd::name(exp.cmd as u32);
                let sent: Domctl = st.read(args[0], "struct xen_domctl");
                if let Some(dom) = exp.domain {
                    assert_eq!(sent.domain, dom, "test double: {what}: domain {} sent, {dom} expected", sent.domain);
                }
                let mut reply = sent;
                reply.u = State::check_payload(&exp, sent.cmd, sent.interface_version, &sent.u, what);
                if let Some(d) = exp.reply_domain {
                    reply.domain = d;
                }
                if reply != sent {
                    st.write(args[0], bytes_of(&reply), what);
                }
                st.write_handles(&exp, &sent.u, what);
                Call {
                    op,
                    args,
                    cmd: u64::from(sent.cmd),
                    interface_version: Some(sent.interface_version),
                    domain: Some(sent.domain),
                    payload: Some(sent.u),
                }
            }
            HYPERVISOR_SYSCTL => {
                let what = sysctl::cmd::name(exp.cmd as u32);
                let sent: Sysctl = st.read(args[0], "struct xen_sysctl");
                let mut reply = sent;
                reply.u = State::check_payload(&exp, sent.cmd, sent.interface_version, &sent.u, what);
                if reply != sent {
                    st.write(args[0], bytes_of(&reply), what);
                }
                st.write_handles(&exp, &sent.u, what);
                Call {
                    op,
                    args,
                    cmd: u64::from(sent.cmd),
                    interface_version: Some(sent.interface_version),
                    domain: None,
                    payload: Some(sent.u),
                }
            }
            other => panic!("test double: hypercall {other} is not one it can serve"),
        };
        st.calls.push(call);
        exp.rc
    }

    fn buffer(&self, len: usize) -> Result<HypercallBuffer, XenError> {
        let mem = Arc::new(HeapMemory::new(len));
        self.lock().buffers.push(Arc::downgrade(&mem));
        Ok(HypercallBuffer::new(mem))
    }
}

/// Heap memory of the double's buffers, 8-byte aligned at [`BufferMemory::addr`].
#[derive(Debug)]
struct HeapMemory {
    addr: u64,
    start: usize,
    len: usize,
    bytes: Mutex<Vec<u8>>,
}

impl HeapMemory {
    fn new(len: usize) -> HeapMemory {
        let bytes = vec![0u8; len + 8];
        // The vector is never resized, so its heap address stays put when it is moved.
        let base = bytes.as_ptr() as u64;
        let start = ((8 - base % 8) % 8) as usize;
        HeapMemory { addr: base + start as u64, start, len, bytes: Mutex::new(bytes) }
    }
}

impl BufferMemory for HeapMemory {
    fn addr(&self) -> u64 {
        self.addr
    }

    fn len(&self) -> usize {
        self.len
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) {
        let b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.start + offset;
        out.copy_from_slice(&b[from..from + out.len()]);
    }

    fn write_at(&self, offset: usize, data: &[u8]) {
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let from = self.start + offset;
        b[from..from + data.len()].copy_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_and_found_by_address() {
        let r = Recorded::new();
        let b = r.buffer(144).unwrap();
        assert_eq!(b.addr() % 8, 0);
        assert_eq!(b.read::<[u64; 18]>(0).unwrap(), [0; 18]);
        let mut st = r.lock();
        let (_, off) = st.region(b.addr() + 16, 8, "test");
        assert_eq!(off, 16);
    }

    #[test]
    #[should_panic(expected = "not inside a live buffer")]
    fn refuses_addresses_it_did_not_hand_out() {
        let r = Recorded::new();
        r.expect(Exchange::domctl(domctl::cmd::GETDOMAININFO, 0));
        let local = [0u8; 144];
        let _ = r.hypercall(HYPERVISOR_DOMCTL, [local.as_ptr() as u64, 0, 0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "not inside a live buffer")]
    fn refuses_freed_buffers() {
        let r = Recorded::new();
        r.expect(Exchange::domctl(domctl::cmd::GETDOMAININFO, 0));
        let addr = r.buffer(144).unwrap().addr();
        let _ = r.hypercall(HYPERVISOR_DOMCTL, [addr, 0, 0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "unscripted hypercall")]
    fn unscripted_calls_panic() {
        let _ = Recorded::new().hypercall(HYPERVISOR_XEN_VERSION, [0; 5]);
    }

    #[test]
    #[should_panic(expected = "never came")]
    fn assert_done_reports_leftovers() {
        Recorded::xen_4_17().assert_done();
    }
}
