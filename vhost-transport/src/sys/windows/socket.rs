//! A connected named pipe with message framing and handle passing.

use std::fmt;
use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, OwnedHandle};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use vhost_proto::{HEADER_SIZE, MAX_FDS};
use windows_sys::Win32::Foundation::{GetLastError, FALSE};
use windows_sys::Win32::System::Pipes::{
    GetNamedPipeClientProcessId, GetNamedPipeInfo, GetNamedPipeServerProcessId, PIPE_SERVER_END,
    PIPE_TYPE_MESSAGE,
};
use windows_sys::Win32::System::Threading::INFINITE;

use super::handles::{
    encode_preamble, take_handles, PeerHandles, PeerProcess, COUNT_SIZE, HANDLE_CAPACITY,
    VALUE_SIZE,
};
use super::listener::wait_for_client;
use super::overlapped::{
    self, bytes_available, is_disconnect, read_once, win_error, Event, ReadOutcome,
};
use super::pipe;
use crate::{Error, Result};

/// Which end of the pipe this is: the peer's process id is asked for
/// differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Created with `CreateNamedPipeW`; the peer is the client.
    Server,
    /// Opened with `CreateFileW`; the peer is the server.
    Client,
}

/// Where a read stands in the message, which decides what a closed peer or
/// an expired timeout means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// First byte of a message: end of stream is a clean disconnect, and a
    /// timeout or an empty non-blocking pipe may be retried.
    MessageStart,
    /// First byte of a body: a timeout or an empty non-blocking pipe may be
    /// retried, end of stream cuts the message short.
    PartStart,
    /// Inside a message: the call waits for the rest.
    Middle,
}

struct Writer {
    event: Event,
    /// Opened the first time handles are sent.
    peer: Option<PeerProcess>,
}

/// A connected byte-mode named pipe, opened for overlapped I/O.
pub(crate) struct Socket {
    pub(super) pipe: OwnedHandle,
    end: End,
    /// One receiver at a time; holds the event its reads complete on.
    reader: Mutex<Event>,
    /// One sender at a time.
    writer: Mutex<Writer>,
    nonblocking: AtomicBool,
    /// Read timeout in milliseconds, `INFINITE` for none.
    timeout_ms: AtomicU32,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("handle", &self.pipe.as_raw_handle())
            .field("end", &self.end)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Socket {
    pub(super) fn new(pipe: OwnedHandle, end: End) -> Result<Self> {
        Ok(Socket {
            pipe,
            end,
            reader: Mutex::new(Event::new()?),
            writer: Mutex::new(Writer {
                event: Event::new()?,
                peer: None,
            }),
            nonblocking: AtomicBool::new(false),
            timeout_ms: AtomicU32::new(INFINITE),
        })
    }

    pub(crate) fn pair() -> Result<(Self, Self)> {
        let name = pipe::unique_name();
        let path = Path::new(&name);
        let wide = pipe::wide(path);
        let server = pipe::create_instance(path, &wide, true, 1)?;
        let client = pipe::open_client(&wide)?;
        wait_for_client(server.as_handle(), &Event::new()?)?;
        Ok((
            Socket::new(server, End::Server)?,
            Socket::new(client, End::Client)?,
        ))
    }

    pub(crate) fn connect(path: &Path) -> Result<Self> {
        let client = pipe::open_client(&pipe::wide(path))?;
        Socket::from_handle(client)
    }

    /// Takes over a handle that must be a byte-mode named pipe
    /// ([`Error::NotAPipe`] otherwise), opened for overlapped I/O.
    pub(super) fn from_handle(pipe: OwnedHandle) -> Result<Self> {
        let mut flags = 0u32;
        // SAFETY: only queries the handle; the other out pointers may be null.
        let ok = unsafe {
            GetNamedPipeInfo(
                pipe.as_raw_handle(),
                &mut flags,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if ok == FALSE {
            log::debug!("GetNamedPipeInfo: {}", io::Error::last_os_error());
            return Err(Error::NotAPipe);
        }
        if flags & PIPE_TYPE_MESSAGE != 0 {
            return Err(Error::NotAPipe);
        }
        let end = if flags & PIPE_SERVER_END != 0 {
            End::Server
        } else {
            End::Client
        };
        Socket::new(pipe, end)
    }

    fn peer_pid(&self) -> Result<u32> {
        let mut pid = 0u32;
        let h = self.pipe.as_raw_handle();
        let (ok, op) = match self.end {
            // SAFETY: only queries the pipe; `pid` is a valid out pointer.
            End::Server => (
                unsafe { GetNamedPipeClientProcessId(h, &mut pid) },
                "GetNamedPipeClientProcessId",
            ),
            // SAFETY: as above.
            End::Client => (
                unsafe { GetNamedPipeServerProcessId(h, &mut pid) },
                "GetNamedPipeServerProcessId",
            ),
        };
        if ok == FALSE {
            // SAFETY: reads the calling thread's last-error value.
            return Err(match unsafe { GetLastError() } {
                code if is_disconnect(code) => Error::Disconnected,
                code => win_error(op, code),
            });
        }
        Ok(pid)
    }

    pub(crate) fn send(&self, parts: &[&[u8]; 3], fds: &[BorrowedHandle<'_>]) -> Result<()> {
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds {
                got: fds.len(),
                max: MAX_FDS,
            });
        }
        let mut writer = lock(&self.writer);
        if !fds.is_empty() && writer.peer.is_none() {
            writer.peer = Some(PeerProcess::open(self.peer_pid()?)?);
        }
        let writer = &*writer;
        let delivered = match &writer.peer {
            Some(peer) if !fds.is_empty() => Some(PeerHandles::duplicate(peer, fds)?),
            _ => None,
        };
        let values = delivered.as_ref().map_or(&[][..], |d| d.values());
        let total = parts
            .iter()
            .try_fold(COUNT_SIZE + values.len() * VALUE_SIZE, |n, p| {
                n.checked_add(p.len())
            })
            .ok_or_else(|| Error::io("WriteFile", io::ErrorKind::InvalidInput))?;
        let mut message = Vec::with_capacity(total);
        encode_preamble(values, &mut message);
        for part in parts {
            message.extend_from_slice(part);
        }
        match overlapped::write_all(self.pipe.as_handle(), &writer.event, &message) {
            Ok(()) => {
                if let Some(delivered) = delivered {
                    delivered.keep();
                }
                Ok(())
            }
            Err(failure) => {
                // Once any byte is in the pipe the peer may have read the
                // preamble and own the handles: leave them to it. Otherwise
                // `delivered` closes them in the peer.
                if let Some(delivered) = delivered.filter(|_| failure.written > 0) {
                    delivered.keep();
                }
                Err(failure.error)
            }
        }
    }

    /// Reads exactly `buf.len()` bytes. `expected` and `before` place them in
    /// the part being read, for [`Error::PartialMessage`].
    fn read_exact(
        &self,
        event: &Event,
        buf: &mut [u8],
        position: Position,
        expected: usize,
        before: usize,
    ) -> Result<()> {
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
            let retryable = got == 0 && position != Position::Middle;
            let nonblocking = self.nonblocking.load(Ordering::Relaxed);
            if retryable && nonblocking {
                match bytes_available(self.pipe.as_handle())? {
                    // Whatever is left is read below; nothing left is the
                    // end of the stream.
                    None if position == Position::MessageStart => return Err(Error::Disconnected),
                    None => {}
                    Some(0) => return Err(Error::WouldBlock),
                    Some(_) => {}
                }
            }
            let timeout = if nonblocking {
                INFINITE
            } else {
                self.timeout_ms.load(Ordering::Relaxed)
            };
            match read_once(self.pipe.as_handle(), event, rest, timeout)? {
                ReadOutcome::Data(n) => got += n,
                ReadOutcome::EndOfStream if retryable && position == Position::MessageStart => {
                    return Err(Error::Disconnected)
                }
                ReadOutcome::TimedOut if retryable => return Err(Error::TimedOut),
                ReadOutcome::EndOfStream | ReadOutcome::TimedOut => {
                    return Err(Error::PartialMessage {
                        expected,
                        got: before + got,
                    })
                }
            }
        }
        Ok(())
    }

    pub(crate) fn recv_header(&self) -> Result<([u8; HEADER_SIZE], Vec<OwnedHandle>)> {
        let event = lock(&self.reader);
        let mut count = [0u8; COUNT_SIZE];
        self.read_exact(&event, &mut count, Position::MessageStart, COUNT_SIZE, 0)?;
        let count = u32::from_le_bytes(count) as usize;
        let taken = count.min(HANDLE_CAPACITY);
        let mut values = [0u8; HANDLE_CAPACITY * VALUE_SIZE];
        let values = values.get_mut(..taken * VALUE_SIZE).unwrap_or(&mut []);
        let preamble_len = COUNT_SIZE + values.len();
        if let Err(e) = self.read_exact(&event, values, Position::Middle, preamble_len, COUNT_SIZE)
        {
            // Values that arrived whole name handles the peer gave us: close
            // them.
            if let Error::PartialMessage { got, .. } = e {
                let whole = values.get(..got.saturating_sub(COUNT_SIZE)).unwrap_or(&[]);
                drop(take_handles(whole));
            }
            return Err(e);
        }
        // Owned from here on: every return below closes them.
        let (handles, first_bad) = take_handles(values);
        if count > HANDLE_CAPACITY {
            log::warn!(
                "peer announced {count} handles; {} taken and closed",
                handles.len()
            );
            return Err(Error::ControlTruncated);
        }
        if count > MAX_FDS {
            return Err(Error::TooManyFds {
                got: count,
                max: MAX_FDS,
            });
        }
        if let Some(value) = first_bad {
            return Err(Error::InvalidHandle { value });
        }
        let mut header = [0u8; HEADER_SIZE];
        self.read_exact(&event, &mut header, Position::Middle, HEADER_SIZE, 0)?;
        Ok((header, handles))
    }

    pub(crate) fn recv_body(&self, buf: &mut [u8]) -> Result<()> {
        let event = lock(&self.reader);
        let expected = buf.len();
        self.read_exact(&event, buf, Position::PartStart, expected, 0)
    }

    /// Whether bytes this end has read are waiting in a buffer of its own:
    /// never, every read goes straight into the caller's buffer.
    pub(crate) fn has_buffered(&self) -> bool {
        false
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.nonblocking.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        let ms = match timeout {
            None => INFINITE,
            Some(d) if d.is_zero() => {
                return Err(Error::io("set_read_timeout", io::ErrorKind::InvalidInput))
            }
            // Rounded up, so a short timeout never becomes zero, and kept
            // below INFINITE.
            Some(d) => u32::try_from(d.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u32::MAX)
                .min(INFINITE - 1),
        };
        self.timeout_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }
}
