use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout,
};

use std::{
    collections::VecDeque,
    io::{self, ErrorKind},
};
use tokio::time::{error::Elapsed, Duration};

use crate::protocol::{self, Packet, Protocol};

/// mqim patch: what a connection's read and write buffers start with.
const INITIAL_BUFFER_BYTES: usize = 1024;
/// mqim patch: the largest read or write buffer a connection keeps between batches.
const KEPT_BUFFER_BYTES: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O = {0}")]
    Io(#[from] io::Error),
    #[error("Invalid data = {0}")]
    Protocol(#[from] protocol::Error),
    #[error["Keep alive timeout"]]
    KeepAlive(#[from] Elapsed),
}

/// Network transforms packets <-> frames efficiently. It takes
/// advantage of pre-allocation, buffering and vectorization when
/// appropriate to achieve performance
pub struct Network<P> {
    /// Socket for IO
    socket: Box<dyn N>,
    /// Buffered reads
    read: BytesMut,
    /// Buffered writes
    write: BytesMut,
    /// Maximum packet size
    max_incoming_size: usize,
    /// Maximum connection buffer count. TODO: Change this to use bytes for deterministicness
    max_connection_buffer_len: usize,
    /// Keep alive timeout
    keepalive: Duration,
    /// Protocol
    protocol: P,
    /// mqim patch: the read buffer grew past `KEPT_BUFFER_BYTES` (see `readv`).
    read_grown: bool,
}

impl<P: Protocol> Network<P> {
    pub fn new(
        socket: Box<dyn N>,
        max_incoming_size: usize,
        max_connection_buffer_len: usize,
        protocol: P,
    ) -> Network<P> {
        Network {
            socket,
            // mqim patch: was 10 KiB each, allocated for every idle connection; both
            // grow on demand.
            read: BytesMut::with_capacity(INITIAL_BUFFER_BYTES),
            write: BytesMut::with_capacity(INITIAL_BUFFER_BYTES),
            max_incoming_size,
            max_connection_buffer_len,
            // Overwritten by keepalive value in connect packet, otherwise we
            // would wait indefinitely until we get a packet / network error
            // when we call read.
            keepalive: Duration::MAX,
            protocol,
            read_grown: false,
        }
    }

    pub fn set_keepalive(&mut self, keepalive: u16) {
        let keepalive = Duration::from_secs(keepalive as u64);
        self.keepalive = keepalive + keepalive.mul_f32(0.5);
    }

    /// Reads more than 'required' bytes to frame a packet into self.read buffer
    async fn read_bytes(&mut self, required: usize) -> io::Result<usize> {
        // TODO: Fix this cancellation bug and write unit test
        let mut total_read = 0;
        loop {
            let read = self.socket.read_buf(&mut self.read).await?;
            if 0 == read {
                let error = if self.read.is_empty() {
                    io::Error::new(ErrorKind::ConnectionAborted, "connection closed by peer")
                } else {
                    io::Error::new(ErrorKind::ConnectionReset, "connection reset by peer")
                };

                return Err(error);
            }

            total_read += read;
            // mqim patch: noted here, while the buffer holds what was read: once
            // packets are split off, `capacity` no longer shows the allocation.
            self.read_grown |= self.read.capacity() > KEPT_BUFFER_BYTES;
            if total_read >= required {
                return Ok(total_read);
            }
        }
    }

    /// Waits on network for 1 packet
    pub async fn read(&mut self) -> Result<Packet, Error> {
        loop {
            let required = match Protocol::read_mut(
                &mut self.protocol,
                &mut self.read,
                self.max_incoming_size,
            ) {
                Ok(packet) => return Ok(packet),
                Err(protocol::Error::InsufficientBytes(required)) => required,
                Err(e) => return Err(e.into()),
            };

            // read more packets until a frame can be created. This function
            // blocks until a frame can be created. Use this in a select! branch
            timeout(self.keepalive, self.read_bytes(required)).await??;
        }
    }

    /// Read packets in bulk. This allow replies to be in bulk. This method is used
    /// after the connection is established to read a bunch of incoming packets
    pub fn readv(&mut self, packets: &mut VecDeque<Packet>) -> Result<usize, Error> {
        loop {
            match self
                .protocol
                .read_mut(&mut self.read, self.max_incoming_size)
            {
                Ok(packet) => {
                    packets.push_back(packet);
                    let connection_buffer_length = packets.len();
                    if connection_buffer_length >= self.max_connection_buffer_len {
                        return Ok(connection_buffer_length);
                    }
                }
                Err(protocol::Error::InsufficientBytes(_)) => {
                    self.release_read_buffer();
                    return Ok(packets.len());
                }
                Err(e) => return Err(io::Error::new(ErrorKind::InvalidData, e.to_string()).into()),
            }
        }
    }

    /// mqim patch: a large packet (up to the maximum packet size, 256 KiB in mqim) grew
    /// the read buffer to its size, and the connection kept that allocation for as long
    /// as it stayed connected. Once everything read is parsed, a grown buffer is
    /// replaced by a small one; the packets split off it keep the old allocation alive
    /// only as long as they live themselves.
    fn release_read_buffer(&mut self) {
        if self.read_grown && self.read.is_empty() {
            self.read = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
            self.read_grown = false;
        }
    }

    pub async fn write(&mut self, packet: Packet) -> Result<(), Error> {
        Protocol::write(&self.protocol, packet, &mut self.write)?;
        self.socket.write_all(&self.write).await?;
        self.write.clear();
        Ok(())
    }

    /// mqim patch: takes any iterator of packets (was a `VecDeque`). The remote link
    /// collected each batch of notifications into a fresh `VecDeque` for this, which
    /// grew (and was freed) again on every batch: in a broadcast burst each
    /// connection's batch is dozens of packets, and those reallocations were ~5 % of the
    /// server's CPU. It now passes the drained batch itself.
    pub async fn writev(
        &mut self,
        packets: impl IntoIterator<Item = Packet>,
    ) -> Result<(), Error> {
        for packet in packets {
            Protocol::write(&self.protocol, packet, &mut self.write)?;
        }
        self.socket.write_all(&self.write).await?;
        self.write.clear();
        // mqim patch: the write buffer grew to the largest batch ever written (a group
        // burst: tens of KiB per connection) and kept it. Start small again after one
        // larger than `KEPT_BUFFER_BYTES`.
        if self.write.capacity() > KEPT_BUFFER_BYTES {
            self.write = BytesMut::with_capacity(INITIAL_BUFFER_BYTES);
        }
        Ok(())
    }
}

pub trait N: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T> N for T where T: AsyncRead + AsyncWrite + Unpin + Send {}
