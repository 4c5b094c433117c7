//! The host side: the hybrid-vsock handshake on the listening socket (`CONNECT <port>\n`,
//! answered `OK <host-port>\n`) and connections out to `<uds-path>_<port>`.
//!
//! This is the convention Firecracker, Cloud Hypervisor and rust-vmm's vhost-device-vsock
//! use, so host tools written for them work unchanged.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, recv, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// Longest handshake line a host process may send, newline included.
pub const MAX_LINE: usize = 64;

/// What the bytes a host process sent so far say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// No full line yet.
    Incomplete,
    /// `CONNECT <port>`: the line is `consumed` bytes long.
    Connect { port: u32, consumed: usize },
    /// Anything else.
    Invalid,
}

/// Parses the start of what a host process sent on the listening socket.
pub(crate) fn parse_handshake(bytes: &[u8]) -> Handshake {
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        return if bytes.len() >= MAX_LINE {
            Handshake::Invalid
        } else {
            Handshake::Incomplete
        };
    };
    if nl >= MAX_LINE {
        return Handshake::Invalid;
    }
    let Ok(line) = std::str::from_utf8(&bytes[..nl]) else {
        return Handshake::Invalid;
    };
    let mut words = line.trim_end_matches('\r').split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(cmd), Some(port), None) if cmd.eq_ignore_ascii_case("connect") => {
            match port.parse::<u32>() {
                Ok(port) if port != u32::MAX => Handshake::Connect {
                    port,
                    consumed: nl + 1,
                },
                _ => Handshake::Invalid,
            }
        }
        _ => Handshake::Invalid,
    }
}

/// Looks at what the host process sent, without taking it: at most [`MAX_LINE`] bytes.
/// `Ok(None)`: nothing there now. `Ok(Some(empty))`: the stream ended.
pub(crate) fn peek_line(stream: &UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_LINE];
    loop {
        match recv(
            stream.as_raw_fd(),
            &mut buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The socket a guest connection to host port `port` is bridged to.
pub(crate) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to `path` without blocking: a listener whose backlog is full refuses (EAGAIN)
/// instead of holding the device up. The stream returned is non-blocking.
pub(crate) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_and_everything_else_is_invalid() {
        assert_eq!(
            parse_handshake(b"CONNECT 1234\nrest"),
            Handshake::Connect {
                port: 1234,
                consumed: 13
            }
        );
        assert_eq!(
            parse_handshake(b"connect 5\r\n"),
            Handshake::Connect {
                port: 5,
                consumed: 11
            }
        );
        assert_eq!(parse_handshake(b"CONNECT 12"), Handshake::Incomplete);
        assert_eq!(parse_handshake(b""), Handshake::Incomplete);
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT x\n",
            b"CONNECT -1\n",
            b"CONNECT 4294967295\n",
            b"CONNECT 4294967296\n",
            b"CONNECT 1 2\n",
            b"LISTEN 1\n",
            b"\xff\xfe 1\n",
            &[b'A'; MAX_LINE],
        ] {
            assert_eq!(parse_handshake(bad), Handshake::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn port_path_appends_an_underscore_and_the_port() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 1234),
            PathBuf::from("/run/v.sock_1234")
        );
    }

    #[test]
    fn connecting_to_a_missing_socket_fails_at_once() {
        let e = connect_nonblocking(Path::new("/nonexistent/vsock_1")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
