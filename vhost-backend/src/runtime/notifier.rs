//! The eventfds of a ring (kick, call, error): checked and made non-blocking when they
//! arrive, signalled without ever blocking.
//!
//! The front-end chooses these descriptors. One that is not an eventfd breaks the worker: a
//! write to a full pipe blocks forever (and with it GET_VRING_BASE, the disconnect and the
//! daemon's stop), and a pipe whose writer closed is readable forever, so a level-triggered
//! epoll set spins on it. SET_VRING_KICK/CALL/ERR therefore refuse anything but an eventfd
//! and switch the ones they accept to `O_NONBLOCK`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::{fstat, SFlag};

use super::vring::VringError;

/// What `/proc/self/fd/N` names an eventfd.
const EVENTFD_LINK: &str = "anon_inode:[eventfd]";

/// Which descriptor of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notifier {
    /// The kick eventfd (SET_VRING_KICK).
    Kick,
    /// The call eventfd (SET_VRING_CALL).
    Call,
    /// The error eventfd (SET_VRING_ERR).
    Err,
    /// The dirty-log eventfd (SET_LOG_FD; not a ring's, reported as ring 0's).
    Log,
}

impl std::fmt::Display for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Notifier::Kick => "kick",
            Notifier::Call => "call",
            Notifier::Err => "error",
            Notifier::Log => "dirty-log",
        })
    }
}

/// What kind of descriptor `fd` is when it is not an eventfd; `None` for an eventfd.
fn not_an_eventfd(fd: BorrowedFd<'_>) -> io::Result<Option<String>> {
    if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())) {
        return Ok((target.as_os_str() != EVENTFD_LINK).then(|| target.display().to_string()));
    }
    // Without /proc: refuse every file type whose reads or writes can block or never run
    // dry; an eventfd's anonymous inode is none of them.
    let st = fstat(fd).map_err(io::Error::from)?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let name = match kind {
        SFlag::S_IFIFO => "a pipe",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFDIR => "a directory",
        _ => return Ok(None),
    };
    Ok(Some(name.into()))
}

/// Accepts `fd` as the `which` eventfd of ring `index`: refuses anything that is not an
/// eventfd and sets `O_NONBLOCK` (on the open file description, which the front-end
/// shares; eventfd users do not rely on blocking writes).
pub(crate) fn accept(index: u16, which: Notifier, fd: OwnedFd) -> Result<File, VringError> {
    let io_err = |source: io::Error| VringError::EventFd {
        index,
        which,
        source,
    };
    if let Some(kind) = not_an_eventfd(fd.as_fd()).map_err(io_err)? {
        return Err(VringError::NotEventFd { index, which, kind });
    }
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|e| io_err(e.into()))?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(&fd, FcntlArg::F_SETFL(flags)).map_err(|e| io_err(e.into()))?;
    Ok(File::from(fd))
}

/// Adds 1 to an eventfd's counter. A counter already at its maximum (`EAGAIN`) has a
/// signal pending anyway, so that counts as signalled.
///
/// The write is rustix's raw system call: glibc's `write` is a cancellation point that
/// switches asynchronous cancellation on and off around the call, paid at every used-buffer
/// notification; the runtime never cancels threads.
pub(crate) fn signal(f: &File) {
    match rustix::io::write(f, &1u64.to_ne_bytes()) {
        Ok(_) => {}
        Err(rustix::io::Errno::AGAIN) => {
            log::debug!("eventfd {} already signalled", f.as_raw_fd());
        }
        Err(e) => log::warn!(
            "signalling eventfd {} failed: {}",
            f.as_raw_fd(),
            io::Error::from(e)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use std::io::Write;

    #[test]
    fn blocking_eventfd_is_accepted_made_non_blocking_and_never_blocks_a_signal() {
        let fd = OwnedFd::from(EventFd::from_value_and_flags(0, EfdFlags::empty()).unwrap());
        let mut writer = File::from(fd.try_clone().unwrap());
        let f = accept(0, Notifier::Call, fd).unwrap();
        let flags = OFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFL).unwrap());
        assert!(flags.contains(OFlag::O_NONBLOCK));
        // At the counter's maximum a signal is a no-op, not a blocked thread.
        writer.write_all(&(u64::MAX - 1).to_ne_bytes()).unwrap();
        signal(&f);
        let mut buf = [0u8; 8];
        std::io::Read::read_exact(&mut writer, &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), u64::MAX - 1);
    }

    #[test]
    fn pipe_socket_and_character_device_are_refused() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let (s, _t) = std::os::unix::net::UnixStream::pair().unwrap();
        let null: OwnedFd = File::open("/dev/null").unwrap().into();
        for fd in [r, s.into(), null] {
            let e = accept(3, Notifier::Kick, fd).unwrap_err();
            assert!(
                matches!(
                    e,
                    VringError::NotEventFd {
                        index: 3,
                        which: Notifier::Kick,
                        ..
                    }
                ),
                "{e}"
            );
        }
    }
}
