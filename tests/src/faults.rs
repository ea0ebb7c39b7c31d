//! Loopback fault injectors for the outage tests: a TCP proxy in front of a
//! database that can refuse connections or accept them and never answer,
//! and an HTTP proxy in front of moto that answers Secrets Manager calls
//! with throttling errors or 5xx instead of forwarding them.
//!
//! Both listen on 127.0.0.1 only, serve a bounded number of connections,
//! bound every wait, and stop when dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Connections a proxy serves before it stops.
const MAX_CONNECTIONS: usize = 2_000;
/// How long a forwarded or held connection may live.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Bytes of one HTTP request head and body.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// (secret id, token) → value of each PutSecretValue let through.
type Puts = std::collections::HashMap<(String, String), String>;
/// [`Puts`], once the proxy plays the service (`None` until then).
type SharedPuts = Arc<Mutex<Option<Puts>>>;

/// What the database proxy does with the next connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbFault {
    /// Forwards to the database.
    None,
    /// Nothing listens on the port: connections are refused.
    Refuse,
    /// Accepts TCP, reads what it is sent, never answers.
    Hang,
}

/// A TCP proxy in front of a database server. Secrets point at
/// `127.0.0.1:<port>`; [`set`](Self::set) changes what new connections meet
/// (connections already forwarded keep going).
pub struct DbFaultProxy {
    pub port: u16,
    mode: watch::Sender<DbFault>,
    task: JoinHandle<()>,
}

impl DbFaultProxy {
    pub async fn start(upstream: SocketAddr) -> DbFaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the database fault proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, mut rx) = watch::channel(DbFault::None);
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut served = 0;
            while served < MAX_CONNECTIONS {
                let fault = *rx.borrow_and_update();
                if fault == DbFault::Refuse {
                    // Closing the listening socket makes connects fail with
                    // "connection refused", as a stopped server does.
                    listener = None;
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                if listener.is_none() {
                    // The same port again (SO_REUSEADDR is set by tokio).
                    match TcpListener::bind(addr).await {
                        Ok(l) => listener = Some(l),
                        Err(e) => panic!("rebind the database fault proxy on {addr}: {e}"),
                    }
                }
                let Some(l) = listener.as_ref() else { return };
                tokio::select! {
                    accepted = l.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        served += 1;
                        tokio::spawn(tokio::time::timeout(CONNECTION_LIFETIME, async move {
                            match fault {
                                DbFault::None => {
                                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                                        let mut client = client;
                                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                    }
                                }
                                DbFault::Hang | DbFault::Refuse => {
                                    let mut client = client;
                                    let mut sink = [0u8; 4096];
                                    while let Ok(n) = client.read(&mut sink).await {
                                        if n == 0 {
                                            break;
                                        }
                                    }
                                }
                            }
                        }));
                    }
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        DbFaultProxy {
            port: addr.port(),
            mode,
            task,
        }
    }

    /// What connections made from now on meet.
    pub async fn set(&self, fault: DbFault) {
        let _ = self.mode.send(fault);
        // Let the proxy task close or reopen its socket before the caller dials.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let refused = TcpStream::connect(("127.0.0.1", self.port)).await.is_err();
            if refused == (fault == DbFault::Refuse) {
                return;
            }
        }
        panic!("the database fault proxy did not switch to {fault:?}");
    }
}

impl Drop for DbFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the Secrets Manager proxy answers instead of moto.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmFault {
    /// Forwards to moto.
    None,
    /// HTTP 400 `ThrottlingException`, as the service answers over its rate.
    Throttle,
    /// HTTP 500 `InternalServiceError`, the service's own 5xx.
    InternalError,
    /// HTTP 503 with a body that is not the service's JSON (a load balancer
    /// or VPC endpoint in the way).
    Unavailable,
    /// Reads the request and never answers.
    Hang,
}

#[derive(Clone, Debug)]
struct SmRule {
    fault: SmFault,
    /// Only calls whose `X-Amz-Target` ends with this (`"PutSecretValue"`).
    only: Option<String>,
    /// Matching calls let through before the fault starts.
    skip: usize,
}

/// An HTTP/1.1 proxy in front of moto that records each call's
/// `X-Amz-Target` and answers matching calls with a fault.
pub struct SmFaultProxy {
    pub url: String,
    rule: Arc<Mutex<SmRule>>,
    /// (secret id, token) → value of every PutSecretValue let through, when
    /// the proxy plays the service's version immutability (see
    /// [`like_the_service`](Self::like_the_service)).
    puts: SharedPuts,
    calls: Arc<Mutex<Vec<(String, bool)>>>,
    task: JoinHandle<()>,
}

impl SmFaultProxy {
    pub async fn start(moto_url: &str) -> SmFaultProxy {
        let upstream: SocketAddr = moto_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("moto URL {moto_url:?} is not http://<ip>:<port>: {e}"));
        assert!(upstream.ip().is_loopback(), "moto is not on loopback");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Secrets Manager fault proxy on 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("proxy address"));
        let rule = Arc::new(Mutex::new(SmRule {
            fault: SmFault::None,
            only: None,
            skip: 0,
        }));
        let calls: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let puts: SharedPuts = Arc::default();
        let (r, c, p) = (rule.clone(), calls.clone(), puts.clone());
        let task = tokio::spawn(async move {
            for _ in 0..MAX_CONNECTIONS {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (r, c, p) = (r.clone(), c.clone(), p.clone());
                tokio::spawn(tokio::time::timeout(
                    CONNECTION_LIFETIME,
                    sm_connection(client, upstream, r, c, p),
                ));
            }
        });
        SmFaultProxy {
            url,
            rule,
            puts,
            calls,
            task,
        }
    }

    /// Answers a PutSecretValue that repeats a token with a *different*
    /// value with `ResourceExistsException`, as the real service does (moto
    /// silently overwrites the version; see the testing notes). Covers the
    /// puts made through this proxy.
    pub fn like_the_service(self) -> Self {
        *self.puts.lock().expect("puts") = Some(Default::default());
        self
    }

    /// Answers every call (or only `only` calls, after `skip` of them went
    /// through) with `fault` from now on.
    pub fn set(&self, fault: SmFault, only: Option<&str>, skip: usize) {
        *self.rule.lock().expect("rule") = SmRule {
            fault,
            only: only.map(str::to_string),
            skip,
        };
    }

    /// Calls seen so far: (operation, whether it was answered with a fault).
    pub fn calls(&self) -> Vec<(String, bool)> {
        self.calls.lock().expect("calls").clone()
    }
}

impl Drop for SmFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head and Content-Length body).
async fn read_request(sock: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&chunk[..n]);
        if request.len() > MAX_REQUEST_BYTES {
            return None;
        }
        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&request[..end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if request.len() >= end + 4 + len {
            let target = header("x-amz-target").unwrap_or_default();
            let operation = target.rsplit('.').next().unwrap_or_default().to_string();
            return Some((request, operation));
        }
    }
}

async fn sm_connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    rule: Arc<Mutex<SmRule>>,
    calls: Arc<Mutex<Vec<(String, bool)>>>,
    puts: SharedPuts,
) {
    let Some((request, operation)) = read_request(&mut client).await else {
        return;
    };
    if operation == "PutSecretValue" && put_conflicts(&request, &puts) {
        let body = r#"{"__type":"ResourceExistsException","message":"You can't modify an existing version, you can only create a new version."}"#;
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nx-amzn-ErrorType: ResourceExistsException\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(response.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    let fault = {
        let Ok(mut rule) = rule.lock() else { return };
        let matches = rule.only.as_deref().is_none_or(|o| o == operation);
        if !matches || rule.fault == SmFault::None {
            SmFault::None
        } else if rule.skip > 0 {
            rule.skip -= 1;
            SmFault::None
        } else {
            rule.fault
        }
    };
    if let Ok(mut calls) = calls.lock() {
        calls.push((operation, fault != SmFault::None));
    }
    let (status, error_type, body) = match fault {
        SmFault::None => {
            forward(client, upstream, request).await;
            return;
        }
        SmFault::Hang => {
            // Until the client gives up (the connection's lifetime bounds it).
            let mut sink = [0u8; 4096];
            while let Ok(n) = client.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            return;
        }
        SmFault::Throttle => (
            "400 Bad Request",
            Some("ThrottlingException"),
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
        ),
        SmFault::InternalError => (
            "500 Internal Server Error",
            Some("InternalServiceError"),
            r#"{"__type":"InternalServiceError","message":"An error occurred on the server side."}"#,
        ),
        SmFault::Unavailable => (
            "503 Service Unavailable",
            None,
            "<html><body>503 Service Unavailable</body></html>",
        ),
    };
    let error_header = error_type.map_or(String::new(), |t| format!("x-amzn-ErrorType: {t}\r\n"));
    let content_type = if error_type.is_some() {
        "application/x-amz-json-1.1"
    } else {
        "text/html"
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n{error_header}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// Whether this PutSecretValue repeats a token with another value (and
/// records it when it does not), when the proxy plays the service.
fn put_conflicts(request: &[u8], puts: &Mutex<Option<Puts>>) -> bool {
    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&request[end + 4..]) else {
        return false;
    };
    let field = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (secret, token, value) = (
        field("SecretId"),
        field("ClientRequestToken"),
        field("SecretString"),
    );
    let Ok(mut guard) = puts.lock() else {
        return false;
    };
    let Some(puts) = guard.as_mut() else {
        return false;
    };
    match puts.get(&(secret.clone(), token.clone())) {
        Some(existing) => *existing != value,
        None => {
            puts.insert((secret, token), value);
            false
        }
    }
}

/// One request to moto and its answer back; one request per connection.
async fn forward(mut client: TcpStream, upstream: SocketAddr, request: Vec<u8>) {
    let Ok(mut moto) = TcpStream::connect(upstream).await else {
        return;
    };
    // Ask moto to close after answering (it does anyway), so reading its
    // answer to the end is reading one response.
    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut rewritten = request[..end].to_vec();
    rewritten.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    rewritten.extend_from_slice(&request[end + 4..]);
    if moto.write_all(&rewritten).await.is_err() {
        return;
    }
    let mut answer = Vec::new();
    let _ = moto.read_to_end(&mut answer).await;
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}
