//! A loopback TCP proxy between a client (the operator) and a server (the API server) whose
//! connections are passed, reset, black-holed or delayed on command: hung connections and a
//! slow API server, made on loopback. TLS passes through untouched.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with traffic, from the moment it is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Close every open connection with RST; new connections are accepted, then reset.
    Reset,
    /// Accept and never answer: open connections stop forwarding too, and stay dead when the
    /// mode changes back (as after a lost NAT entry or a server gone without a word); they end
    /// only when the client closes them or on [`Mode::Reset`].
    BlackHole,
    /// Forward, every byte from the server reaching the client this much later.
    Delay(Duration),
}

/// A running proxy on 127.0.0.1; stops (resetting its connections) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream`, passing traffic.
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, count) = (mode.clone(), accepted.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(connection(client, upstream, tx.subscribe()));
            }
        });
        Ok(Proxy { addr, mode, accepted, accept })
    }

    /// A proxy to the server of `kubeconfig`'s current cluster, and a copy of the kubeconfig
    /// at `out` that points there, otherwise the same text (only the server's port changes:
    /// its certificate names 127.0.0.1).
    pub async fn for_kubeconfig(kubeconfig: &Path, out: &Path) -> Result<Proxy> {
        let text = std::fs::read_to_string(kubeconfig)?;
        let cluster = crate::current_cluster(kubeconfig)?;
        let url = cluster.server.as_deref().context("the cluster has no server")?;
        let server: http::Uri = url.parse()?;
        let authority = server.authority().context("the server URL has no host")?;
        let port = authority.port_u16().unwrap_or(443);
        let upstream = tokio::net::lookup_host((authority.host(), port))
            .await?
            .next()
            .context("the server's host does not resolve")?;
        anyhow::ensure!(upstream.ip().is_loopback(), "the proxy only forwards to loopback: {upstream}");
        let proxy = Proxy::start(upstream).await?;
        let scheme = server.scheme_str().unwrap_or("https");
        anyhow::ensure!(text.contains(url), "the server URL {url} is not written as such in the kubeconfig");
        std::fs::write(out, text.replace(url, &format!("{scheme}://127.0.0.1:{}", proxy.addr.port())))?;
        Ok(proxy)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches every connection, open or new, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Closes with RST rather than FIN: the peer sees "connection reset".
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

fn reset_halves(read: OwnedReadHalf, write: OwnedWriteHalf) {
    if let Ok(stream) = read.reunite(write) {
        reset(stream);
    }
}

/// A black-holed connection: what the client sends is read and dropped, nothing is answered,
/// until the client closes it, the proxy resets it or stops.
async fn swallow(mut client: TcpStream, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow_and_update() == Mode::Reset {
                    return reset(client);
                }
            }
            n = client.read(&mut buf) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

fn delay_of(mode: Mode) -> Duration {
    match mode {
        Mode::Delay(d) => d,
        _ => Duration::ZERO,
    }
}

/// One client connection, forwarded to `upstream` as `mode` says.
async fn connection(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let first = *mode.borrow_and_update();
    match first {
        Mode::Reset => return reset(client),
        Mode::BlackHole => return swallow(client, mode).await,
        Mode::Pass | Mode::Delay(_) => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return reset(client) };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Bytes from the server, each with the moment it is due at the client.
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut server_open = true;
    loop {
        let due = queue.front().map(|(at, _)| *at);
        tokio::select! {
            changed = mode.changed() => {
                let now = if changed.is_err() { Mode::Reset } else { *mode.borrow_and_update() };
                match now {
                    Mode::Reset => return reset_halves(cr, cw),
                    Mode::BlackHole => {
                        drop((sr, sw));
                        if let Ok(client) = cr.reunite(cw) {
                            swallow(client, mode).await;
                        }
                        return;
                    }
                    Mode::Pass | Mode::Delay(_) => {}
                }
            }
            n = cr.read(&mut up) => match n {
                Ok(n) if n > 0 => {
                    if sw.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            n = sr.read(&mut down), if server_open => match n {
                Ok(n) if n > 0 => {
                    let at = Instant::now() + delay_of(*mode.borrow());
                    queue.push_back((at, down[..n].to_vec()));
                }
                _ => server_open = false,
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some((_, bytes)) = queue.pop_front()
                    && cw.write_all(&bytes).await.is_err()
                {
                    return;
                }
            }
        }
        if !server_open && queue.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Sends `msg` and reads it back; how long the answer took, or what went wrong.
    async fn round_trip(s: &mut TcpStream, msg: &[u8], within: Duration) -> std::io::Result<Duration> {
        let start = Instant::now();
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")),
        };
        assert_eq!(got, msg);
        Ok(start.elapsed())
    }

    /// A reset reached the client: on its read, or on a write after it (EPIPE).
    fn reset_seen(e: &std::io::Error) -> bool {
        matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
    }

    #[tokio::test]
    async fn passes_and_delays() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let fast = round_trip(&mut s, b"hello", Duration::from_secs(5)).await.unwrap();
        assert!(fast < Duration::from_millis(200), "{fast:?}");

        proxy.set(Mode::Delay(Duration::from_millis(400)));
        let slow = round_trip(&mut s, b"again", Duration::from_secs(5)).await.unwrap();
        assert!(slow >= Duration::from_millis(400) && slow < Duration::from_millis(900), "open: {slow:?}");
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        let slow = round_trip(&mut new, b"new", Duration::from_secs(5)).await.unwrap();
        assert!(slow >= Duration::from_millis(400) && slow < Duration::from_millis(900), "new: {slow:?}");

        proxy.set(Mode::Pass);
        let fast = round_trip(&mut s, b"fast", Duration::from_secs(5)).await.unwrap();
        assert!(fast < Duration::from_millis(200), "{fast:?}");
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test]
    async fn black_holes_open_and_new_connections_for_good() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"hello", Duration::from_secs(5)).await.unwrap();

        proxy.set(Mode::BlackHole);
        let within = Duration::from_millis(500);
        let e = round_trip(&mut open, b"lost", within).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "open: no answer, not closed: {e}");
        let mut new = TcpStream::connect(proxy.addr()).await.expect("accepted");
        let e = round_trip(&mut new, b"lost", within).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "new: no answer, not closed: {e}");

        proxy.set(Mode::Pass);
        let e = round_trip(&mut open, b"still", within).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "a black-holed connection stays dead: {e}");
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut fresh, b"back", Duration::from_secs(5)).await.unwrap();

        proxy.set(Mode::Reset);
        let e = round_trip(&mut open, b"x", Duration::from_secs(5)).await.unwrap_err();
        assert!(reset_seen(&e), "a reset ends it: {e}");
    }

    #[tokio::test]
    async fn resets_open_and_new_connections() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut open, b"hello", Duration::from_secs(5)).await.unwrap();

        proxy.set(Mode::Reset);
        let e = round_trip(&mut open, b"x", Duration::from_secs(5)).await.unwrap_err();
        assert!(reset_seen(&e), "open: {e}");
        let mut new = TcpStream::connect(proxy.addr()).await.expect("accepted, then reset");
        let e = round_trip(&mut new, b"x", Duration::from_secs(5)).await.unwrap_err();
        assert!(reset_seen(&e), "new: {e}");

        proxy.set(Mode::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut fresh, b"back", Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn writes_a_kubeconfig_pointed_at_the_proxy() {
        let upstream = echo_server().await;
        let dir = std::env::temp_dir().join(format!("tfjob-proxy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, out) = (dir.join("in.kubeconfig"), dir.join("out.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: Y2E=\n\
             users:\n- name: u\n  user:\n    token: t0k\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
            upstream.port()
        );
        std::fs::write(&src, text).unwrap();
        let proxy = Proxy::for_kubeconfig(&src, &out).await.unwrap();
        let kc = kube::config::Kubeconfig::read_from(&out).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some(format!("https://127.0.0.1:{}", proxy.addr().port()).as_str())
        );
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("Y2E="));
        assert_eq!(kc.current_context.as_deref(), Some("x"));
        let (before, after) =
            (std::fs::read_to_string(&src).unwrap(), std::fs::read_to_string(&out).unwrap());
        let port = |p: u16| format!("127.0.0.1:{p}");
        assert_eq!(
            after,
            before.replace(&port(upstream.port()), &port(proxy.addr().port())),
            "only the port"
        );
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"through", Duration::from_secs(5)).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
