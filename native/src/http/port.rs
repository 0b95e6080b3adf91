//! Where finished exchanges wait for the Python event loop.
//!
//! Tokio tasks push `(id, outcome)` and wake the loop by writing one byte to a socket the loop
//! watches, only when it is not already awake: a burst of outcomes costs one wake-up. The loop
//! drains the socket and the queue in one call. The queue holds at most one outcome per task
//! the loop started and has not collected, so it is bounded by the work in flight.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};

struct Queue<T> {
    ready: Vec<(u64, T)>,
    /// A wake-up byte was written since the loop last took the queue.
    signalled: bool,
}

pub struct Port<T> {
    queue: Mutex<Queue<T>>,
    tx: UnixStream,
    rx: UnixStream,
}

impl<T> Port<T> {
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Port {
            queue: Mutex::new(Queue {
                ready: Vec::new(),
                signalled: false,
            }),
            tx,
            rx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The descriptor the event loop watches for reading.
    pub fn fileno(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    pub fn push(&self, id: u64, outcome: T) {
        let wake = {
            let mut q = self.lock();
            q.ready.push((id, outcome));
            !std::mem::replace(&mut q.signalled, true)
        };
        if wake {
            // A full socket buffer means a wake-up is pending already.
            let _ = (&self.tx).write(&[1]);
        }
    }

    /// Every outcome ready now. The wake-up bytes are read first and the flag is cleared with
    /// the queue taken, under one lock: an outcome pushed after that writes a new byte, so none
    /// is left waiting without a wake-up (a spare byte only costs an empty drain).
    pub fn drain(&self) -> Vec<(u64, T)> {
        let mut sink = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut sink) {
            if n < sink.len() {
                break;
            }
        }
        let mut q = self.lock();
        q.signalled = false;
        std::mem::take(&mut q.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The loop's side: wait for the socket, drain, repeat, until every outcome arrived.
    #[test]
    fn no_outcome_is_left_without_a_wake_up() {
        let port = Arc::new(Port::<u32>::new().unwrap());
        port.rx.set_nonblocking(false).unwrap();
        let total = 4 * 20_000;
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let p = port.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        p.push(t * 20_000 + i, 0);
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut got = 0;
        let mut b = [0u8; 1];
        while got < total {
            // blocks until a wake-up byte: a lost wake-up hangs here
            assert_eq!((&port.rx).read(&mut b).unwrap(), 1);
            port.rx.set_nonblocking(true).unwrap();
            got += port.drain().len();
            port.rx.set_nonblocking(false).unwrap();
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(got, total);
    }

    #[test]
    fn a_burst_wakes_once_and_nothing_is_lost() {
        let port = Arc::new(Port::<u32>::new().unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = port.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        p.push(t * 1000 + i, i as u32);
                    }
                })
            })
            .collect();
        let mut got = 0;
        for th in threads {
            th.join().unwrap();
        }
        got += port.drain().len();
        assert_eq!(got, 4000);
        // one wake-up byte at most was left for the burst, and drain consumed it
        let mut b = [0u8; 8];
        assert!((&port.rx).read(&mut b).is_err());
    }
}
