//! The data path of a session: adding chains, publishing, kicking, waiting for completions.
//! Nothing here allocates.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::{Queue, Result, Session, SessionError};
use crate::virtqueue::{Buffer, UsedElem, VirtqueueDriver};

impl Session {
    fn queue(&mut self, i: usize) -> Result<&mut Queue> {
        let queues = self.queues.len();
        self.queues
            .get_mut(i)
            .ok_or(SessionError::NoSuchQueue { index: i, queues })
    }

    /// Adds a chain of direct descriptors to queue `i` (not yet visible). Returns its head.
    pub fn add_chain(&mut self, i: usize, bufs: &[Buffer]) -> Result<u16> {
        Ok(self.queue(i)?.driver.add_chain(bufs)?)
    }

    /// Adds a chain through an indirect table (needs `max_indirect` in the options).
    pub fn add_indirect(&mut self, i: usize, bufs: &[Buffer]) -> Result<u16> {
        Ok(self.queue(i)?.driver.add_indirect(bufs)?)
    }

    /// Publishes what was added to queue `i` and kicks when the device asks for it. Returns
    /// whether it kicked.
    pub fn publish(&mut self, i: usize) -> Result<bool> {
        let q = self.queue(i)?;
        let kick = q.driver.publish()?;
        if kick {
            q.driver.kick(&q.kick)?;
        }
        Ok(kick)
    }

    /// Kicks queue `i` unconditionally.
    pub fn kick(&mut self, i: usize) -> Result<()> {
        let q = self.queue(i)?;
        Ok(q.driver.kick(&q.kick)?)
    }

    /// Adds a chain, publishes it and kicks if needed. Returns its head.
    pub fn submit(&mut self, i: usize, bufs: &[Buffer]) -> Result<u16> {
        let head = self.add_chain(i, bufs)?;
        self.publish(i)?;
        Ok(head)
    }

    /// Queue `i`'s call eventfd as a borrowed descriptor (to watch it with `epoll` or `poll`
    /// without reading it through [`Session::eventfds`]).
    pub fn call_fd(&self, i: usize) -> Option<BorrowedFd<'_>> {
        self.queues.get(i).map(|q| super::borrow(&q.call))
    }

    /// The next completion of queue `i`, if there is one.
    pub fn pop_used(&mut self, i: usize) -> Result<Option<UsedElem>> {
        Ok(self.queue(i)?.driver.pop_used()?)
    }

    /// Waits up to `timeout` for the next completion of queue `i` (sleeping on its call
    /// eventfd).
    pub fn wait_used(&mut self, i: usize, timeout: Duration) -> Result<UsedElem> {
        let deadline = Instant::now() + timeout;
        let q = self.queue(i)?;
        loop {
            if let Some(used) = q.driver.pop_used()? {
                return Ok(used);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SessionError::Timeout { queue: i, timeout });
            }
            VirtqueueDriver::wait_call(&q.call, deadline - now)?;
        }
    }

    /// One request at queue depth 1: submit the chain, wait for its completion, check that
    /// the device returned this chain.
    pub fn round_trip(&mut self, i: usize, bufs: &[Buffer], timeout: Duration) -> Result<UsedElem> {
        let head = self.submit(i, bufs)?;
        let used = self.wait_used(i, timeout)?;
        if used.id != head {
            return Err(SessionError::UnexpectedCompletion {
                queue: i,
                expected: head,
                got: used.id,
            });
        }
        Ok(used)
    }
}
