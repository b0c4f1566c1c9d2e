//! Client sockets: bound to a chosen 127.x.y.z source address without reserving a
//! port (`IP_BIND_ADDRESS_NO_PORT`), so the kernel picks the port per 4-tuple at
//! connect time and one source address never runs out of ports for many targets.
//!
//! Reads go into one buffer per worker thread, borrowed only while a read runs: an
//! idle session holds no read buffer.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Opens a TCP connection from `source` (any port) to `target`. The connection is
/// usable at once; the first write waits for the handshake to finish.
pub fn connect(source: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(source) = source {
        let yes: libc::c_int = 1;
        // SAFETY: setsockopt reads an int we own, on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &yes as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    Ok(TcpStream::from(socket))
}

/// Writes all of `bytes` (waits while the socket is full or still connecting).
pub async fn write_all(stream: &mut TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let written = futures_lite::future::poll_fn(|cx| Pin::new(&mut *stream).poll_write(cx, bytes)).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[written..];
    }
    Ok(())
}

/// Waits for input and hands it to `take` (borrowed from the thread's buffer).
/// Returns the number of bytes, 0 when the peer closed.
pub async fn read_with(stream: &mut TcpStream, mut take: impl FnMut(&[u8])) -> io::Result<usize> {
    futures_lite::future::poll_fn(|cx| poll_read_with(stream, cx, &mut take)).await
}

/// One poll of a read into the thread's buffer; `take` sees the bytes read.
pub fn poll_read_with(
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
    take: &mut impl FnMut(&[u8]),
) -> Poll<io::Result<usize>> {
    READ_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut buffer[..]) {
            Poll::Ready(Ok(n)) => {
                take(&buffer[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
}

/// The `index`-th source address of a range starting at `base` (skipping .0 and .255
/// in the last octet).
pub fn source_address(base: std::net::Ipv4Addr, index: u32) -> IpAddr {
    let start = u32::from(base);
    let hosts_per_block = 254;
    let block = index / hosts_per_block;
    let host = index % hosts_per_block + 1;
    IpAddr::V4(std::net::Ipv4Addr::from((start & 0xFFFF_FF00).wrapping_add(block << 8) | host))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Source addresses walk through 127.x.y.1-254.
    #[test]
    fn source_addresses_skip_network_and_broadcast() {
        let base = "127.1.0.0".parse().unwrap();
        assert_eq!(source_address(base, 0).to_string(), "127.1.0.1");
        assert_eq!(source_address(base, 253).to_string(), "127.1.0.254");
        assert_eq!(source_address(base, 254).to_string(), "127.1.1.1");
    }
}
