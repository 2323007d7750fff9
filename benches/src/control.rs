//! The testbed's control interface: a line-oriented JSON protocol over a unix
//! socket, used by the `stats` / `reset` / `set-fail` subcommands and by tests.
//!
//! It owns the socket naming (by default an abstract socket derived from the
//! canonical mount path, so clients only need `--mount`; no file is left behind
//! and a filesystem path can be used instead), the request/response types, the
//! server loop and the client call. One JSON request per line, one JSON
//! response line back.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lazy::{ChunkSet, LazyVolume, Stats};

/// Prefix of the abstract socket names the testbed binds.
const ABSTRACT_PREFIX: &str = "prewarm-testbed:";
/// Longest abstract name we use verbatim (sun_path is 108 bytes incl. the NUL).
const MAX_ABSTRACT: usize = 100;

/// Errors of the control interface.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The mount path could not be resolved.
    #[error("cannot resolve mount point {path}: {source}")]
    Mount {
        /// The path given.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Binding or connecting the socket failed.
    #[error("control socket {endpoint}: {source}")]
    Socket {
        /// The socket.
        endpoint: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The server sent something that is not a response.
    #[error("malformed control response: {0}")]
    Protocol(String),
    /// The server refused the request.
    #[error("testbed refused the request: {0}")]
    Refused(String),
}

/// Where the control socket lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Linux abstract-namespace socket name (without the leading NUL).
    Abstract(String),
    /// A socket file.
    Path(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Abstract(name) => write!(f, "@{name}"),
            Endpoint::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Endpoint {
    /// The default endpoint of the testbed mounted at `mount`: an abstract
    /// socket named after the canonical mount path (hashed when too long).
    pub fn for_mount(mount: &Path) -> Result<Self, ControlError> {
        let canon = mount.canonicalize().map_err(|source| ControlError::Mount {
            path: mount.to_path_buf(),
            source,
        })?;
        let text = canon.to_string_lossy();
        let name = format!("{ABSTRACT_PREFIX}{text}");
        if name.len() <= MAX_ABSTRACT {
            Ok(Endpoint::Abstract(name))
        } else {
            let hash = fnv1a64(text.as_bytes());
            Ok(Endpoint::Abstract(format!("{ABSTRACT_PREFIX}#{hash:016x}")))
        }
    }

    fn err(&self, source: io::Error) -> ControlError {
        ControlError::Socket {
            endpoint: self.to_string(),
            source,
        }
    }

    fn addr(&self) -> Result<SocketAddr, ControlError> {
        match self {
            Endpoint::Abstract(name) => {
                SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| self.err(e))
            }
            Endpoint::Path(p) => SocketAddr::from_pathname(p).map_err(|e| self.err(e)),
        }
    }

    /// Binds the listening socket.
    pub fn bind(&self) -> Result<UnixListener, ControlError> {
        let addr = self.addr()?;
        UnixListener::bind_addr(&addr).map_err(|e| self.err(e))
    }

    /// Connects to a serving testbed.
    pub fn connect(&self) -> Result<UnixStream, ControlError> {
        let addr = self.addr()?;
        UnixStream::connect_addr(&addr).map_err(|e| self.err(e))
    }
}

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Counter snapshot; `brief` omits the chunk lists.
    Stats {
        /// Omit `hydrated` and `hydration_order`.
        #[serde(default)]
        brief: bool,
    },
    /// Make all chunks cold and zero the counters.
    Reset,
    /// Replace the failure-injection set (`""` clears it).
    SetFailChunks {
        /// Chunk list such as `3,17,100-110`.
        chunks: String,
    },
    /// Replace the hang set: reads of these chunks never answer until it is
    /// cleared (`""`).
    SetHangChunks {
        /// Chunk list such as `3,17,100-110`.
        chunks: String,
    },
}

/// A control response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Counters (for `stats`, and after `reset` / `set_fail_chunks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

impl Response {
    fn ok(stats: Option<Stats>) -> Self {
        Self {
            ok: true,
            error: None,
            stats,
        }
    }

    fn refused(error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            stats: None,
        }
    }
}

/// Carries out one request against the volume.
pub fn handle(volume: &LazyVolume, req: &Request) -> Response {
    match req {
        Request::Ping => Response::ok(None),
        Request::Stats { brief } => Response::ok(Some(volume.stats(!brief))),
        Request::Reset => {
            volume.reset();
            Response::ok(Some(volume.stats(false)))
        }
        Request::SetFailChunks { chunks } => match chunks.parse::<ChunkSet>() {
            Ok(set) => {
                volume.set_fail_chunks(set);
                Response::ok(Some(volume.stats(false)))
            }
            Err(e) => Response::refused(e.to_string()),
        },
        Request::SetHangChunks { chunks } => match chunks.parse::<ChunkSet>() {
            Ok(set) => {
                volume.set_hang_chunks(set);
                Response::ok(Some(volume.stats(false)))
            }
            Err(e) => Response::refused(e.to_string()),
        },
    }
}

fn serve_conn(volume: &LazyVolume, stream: UnixStream) -> io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(volume, &req),
            Err(e) => Response::refused(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).map_err(io::Error::other)?;
        out.push(b'\n');
        writer.write_all(&out)?;
    }
    Ok(())
}

/// Serves control connections forever (each on its own short-lived thread).
/// Run it on a dedicated thread; it ends when the listener fails.
pub fn serve(listener: UnixListener, volume: Arc<LazyVolume>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let volume = Arc::clone(&volume);
                let spawned = std::thread::Builder::new()
                    .name("testbed-ctl".into())
                    .spawn(move || {
                        if let Err(e) = serve_conn(&volume, stream) {
                            eprintln!("prewarm-testbed: control connection: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("prewarm-testbed: cannot spawn control thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("prewarm-testbed: control socket accept failed: {e}");
                return;
            }
        }
    }
}

/// Sends one request to the testbed at `endpoint` and returns its response
/// (a refusal is turned into [`ControlError::Refused`]).
pub fn call(endpoint: &Endpoint, req: &Request) -> Result<Response, ControlError> {
    let stream = endpoint.connect()?;
    let timeout = Some(Duration::from_secs(30));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| endpoint.err(e))?;
    let mut writer = stream.try_clone().map_err(|e| endpoint.err(e))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    writer.write_all(&line).map_err(|e| endpoint.err(e))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(|e| endpoint.err(e))?;
    let resp: Response = serde_json::from_str(reply.trim())
        .map_err(|e| ControlError::Protocol(format!("{e}: {:?}", reply.trim())))?;
    if resp.ok {
        Ok(resp)
    } else {
        Err(ControlError::Refused(
            resp.error.unwrap_or_else(|| "no reason given".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lazy::LazyConfig;

    #[test]
    fn request_wire_format() {
        let r: Request = serde_json::from_str(r#"{"cmd":"stats"}"#).expect("parse");
        assert_eq!(r, Request::Stats { brief: false });
        let r: Request =
            serde_json::from_str(r#"{"cmd":"set_fail_chunks","chunks":"1-2"}"#).expect("parse");
        assert_eq!(
            r,
            Request::SetFailChunks {
                chunks: "1-2".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Reset).expect("ser"),
            r#"{"cmd":"reset"}"#
        );
    }

    #[test]
    fn long_mount_paths_are_hashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long = dir.path().join("x".repeat(120));
        std::fs::create_dir(&long).expect("mkdir");
        match Endpoint::for_mount(&long).expect("endpoint") {
            Endpoint::Abstract(name) => assert!(name.len() <= MAX_ABSTRACT, "{name}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(Endpoint::for_mount(Path::new("/nonexistent/mnt")).is_err());
    }

    #[test]
    fn socket_round_trip() {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(&[7u8; 8192]).expect("write");
        let cfg = LazyConfig {
            chunk_size: 4096,
            latency: Duration::ZERO,
            ..LazyConfig::default()
        };
        let vol = Arc::new(LazyVolume::open(f.path(), cfg).expect("open"));
        let dir = tempfile::tempdir().expect("tempdir");
        let ep = Endpoint::Path(dir.path().join("ctl.sock"));
        let listener = ep.bind().expect("bind");
        let v2 = Arc::clone(&vol);
        std::thread::spawn(move || serve(listener, v2));

        vol.read(4096, 1).expect("read");
        let s = call(&ep, &Request::Stats { brief: false })
            .expect("stats")
            .stats
            .expect("has stats");
        assert_eq!(s.hydrated, Some(vec![1]));
        call(&ep, &Request::SetFailChunks { chunks: "0".into() }).expect("set");
        assert!(vol.read(0, 1).is_err());
        let err = call(&ep, &Request::SetFailChunks { chunks: "z".into() }).expect_err("bad");
        assert!(matches!(err, ControlError::Refused(_)));
        let s = call(&ep, &Request::SetHangChunks { chunks: "1".into() })
            .expect("set hang")
            .stats
            .expect("stats");
        assert_eq!(s.hang_chunks, "1");
        let err = call(
            &ep,
            &Request::SetHangChunks {
                chunks: "9-2".into(),
            },
        )
        .expect_err("bad");
        assert!(matches!(err, ControlError::Refused(_)));
        call(&ep, &Request::SetHangChunks { chunks: "".into() }).expect("clear hang");
        let s = call(&ep, &Request::Reset)
            .expect("reset")
            .stats
            .expect("stats");
        assert_eq!(s.hydrated_chunks, 0);
        assert_eq!(s.fail_chunks, "0");
    }
}
