//! The TUN device of `--route`: opened with the TUNSETIFF ioctl, read as a capture source.
//!
//! The kernel hands every packet routed to the device to our descriptor, one raw IPv4 packet
//! per read (`IFF_NO_PI`: no packet-information prefix), so no capture filter is needed on
//! this path. The device is never made persistent: it lives exactly as long as a descriptor
//! of it is open, and the kernel deletes it (and every route through it) when intercept ends,
//! however it ends.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use tc_core::capture::Capture;
use tc_core::packet::LinkType;

use crate::server::Source;

const TUN_PATH: &CStr = c"/dev/net/tun";
/// The largest packet a read can return (an IPv4 packet is at most 64 KiB).
const READ_BUF: usize = 65_536;

/// Creates the TUN device `name` (it must not exist) and returns its non-blocking,
/// close-on-exec descriptor. EPERM: no CAP_NET_ADMIN; EBUSY: a device of that name exists;
/// ENOENT: no `/dev/net/tun`.
pub fn create(name: &str) -> io::Result<OwnedFd> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            TUN_PATH.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    // IFF_TUN_EXCL: fail with EBUSY rather than attach to a device of that name that exists.
    // The flags field is a C short: 0x8000 wraps to its sign bit, as in C.
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as u16 as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we pass.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The answers routed to the TUN device, as a capture source of raw IPv4 packets.
pub struct TunSource {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl TunSource {
    pub fn new(fd: OwnedFd) -> TunSource {
        TunSource {
            fd,
            buf: vec![0; READ_BUF],
        }
    }
}

impl Capture for TunSource {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut SourceFd(&self.fd.as_raw_fd()),
            token,
            Interest::READABLE,
        )
    }

    fn read_frames(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(LinkType, &[u8]),
    ) -> io::Result<usize> {
        let mut n = 0;
        while n < budget {
            // SAFETY: read into our own buffer of the given length.
            let got = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    // EBADFD: the device was deleted under us.
                    _ => return Err(e),
                }
            }
            n += 1;
            on_frame(LinkType::RawIp, &self.buf[..got as usize]);
        }
        Ok(n)
    }
}

impl Source for TunSource {}
