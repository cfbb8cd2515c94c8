//! Just enough of the PostgreSQL frontend/backend protocol (version 3) to see who a client logs in as
//! before its startup message is relayed: the startup packet, the requests that may precede it, and the
//! FATAL error a refusal answers with.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// PostgreSQL's own limit on a startup packet.
const MAX_STARTUP: usize = 10_000;

#[derive(Debug, PartialEq, Eq)]
pub enum Startup {
    /// A login: the whole packet (relayed unchanged) and the parameters that matter here.
    Login {
        packet: Vec<u8>,
        user: String,
        database: Option<String>,
    },
    /// A cancel request for another session, relayed as is.
    Cancel { packet: Vec<u8> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("the connection ended before a startup message")]
    Closed,
    #[error("startup packet of {0} bytes is out of bounds")]
    BadLength(usize),
    #[error("unsupported frontend protocol {0}.{1}")]
    Protocol(u16, u16),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Reads the client's startup packet. The TLS that protects the connection is already in place, so a
/// request to negotiate SSL or GSS encryption is declined with `N`, as a server without them would.
pub async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Startup, StartupError> {
    // A client may ask for SSL and then GSS encryption before it sends the startup packet; no more.
    for _ in 0..3 {
        let mut prefix = [0u8; 4];
        stream
            .read_exact(&mut prefix)
            .await
            .map_err(|_| StartupError::Closed)?;
        let len = u32::from_be_bytes(prefix) as usize;
        if !(8..=MAX_STARTUP).contains(&len) {
            return Err(StartupError::BadLength(len));
        }
        let mut packet = vec![0u8; len];
        packet[..4].copy_from_slice(&prefix);
        stream
            .read_exact(&mut packet[4..])
            .await
            .map_err(|_| StartupError::Closed)?;
        let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|_| StartupError::Closed)?;
            }
            CANCEL_REQUEST if len == 16 => return Ok(Startup::Cancel { packet }),
            PROTOCOL_3_0 => return login(packet),
            other => return Err(StartupError::Protocol((other >> 16) as u16, other as u16)),
        }
    }
    Err(StartupError::Malformed("too many encryption requests"))
}

fn login(packet: Vec<u8>) -> Result<Startup, StartupError> {
    let mut user = None;
    let mut database = None;
    let body = &packet[8..];
    // Each name and value ends with a NUL, and the list with one more.
    let Some((&0, pairs)) = body.split_last() else {
        return Err(StartupError::Malformed("parameters are not terminated"));
    };
    if !pairs.is_empty() && pairs.last() != Some(&0) {
        return Err(StartupError::Malformed("parameters are not terminated"));
    }
    let mut fields = pairs.split(|b| *b == 0);
    while let Some(key) = fields.next() {
        // The pairs end with a NUL of their own, so the split ends with one empty piece.
        if key.is_empty() {
            break;
        }
        let value = fields
            .next()
            .ok_or(StartupError::Malformed("a parameter has no value"))?;
        let text = |bytes: &[u8]| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| StartupError::Malformed("a parameter is not UTF-8"))
        };
        match key {
            b"user" => user = Some(text(value)?),
            b"database" => database = Some(text(value)?),
            _ => {}
        }
    }
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or(StartupError::Malformed("no user"))?;
    Ok(Startup::Login {
        packet,
        user,
        database,
    })
}

/// A FATAL `ErrorResponse` with SQLSTATE `code`, what PostgreSQL itself sends before it closes a session
/// it refuses; clients show the message.
pub fn fatal(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend(value.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Asks a backend for TLS; true when it agreed (`S`).
pub async fn request_ssl<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<bool> {
    let mut request = 8u32.to_be_bytes().to_vec();
    request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    stream.write_all(&request).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    Ok(answer[0] == b'S')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        packet
    }

    async fn read(input: Vec<u8>) -> (Result<Startup, StartupError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&input).await.unwrap();
        drop(client.shutdown().await);
        let result = read_startup(&mut server).await;
        drop(server.shutdown().await);
        let mut answered = Vec::new();
        client.read_to_end(&mut answered).await.unwrap();
        (result, answered)
    }

    #[tokio::test]
    async fn login_after_a_declined_ssl_request() {
        let packet = startup(&[
            ("user", "alice@p.iam"),
            ("database", "postgres"),
            ("client_encoding", "UTF8"),
        ]);
        let mut input = 8u32.to_be_bytes().to_vec();
        input.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        input.extend_from_slice(&packet);
        let (result, answered) = read(input).await;
        assert_eq!(
            result,
            Ok(Startup::Login {
                packet,
                user: "alice@p.iam".into(),
                database: Some("postgres".into())
            })
        );
        assert_eq!(answered, b"N");
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_login() {
        assert_eq!(
            read(startup(&[("database", "d")])).await.0,
            Err(StartupError::Malformed("no user"))
        );
        assert_eq!(
            read(vec![0, 0, 0, 4]).await.0,
            Err(StartupError::BadLength(4))
        );
        assert_eq!(
            read(vec![0, 1, 0, 0]).await.0,
            Err(StartupError::BadLength(65536))
        );
        let mut v2 = 8u32.to_be_bytes().to_vec();
        v2.extend_from_slice(&0x0002_0000u32.to_be_bytes());
        assert_eq!(read(v2).await.0, Err(StartupError::Protocol(2, 0)));
        let mut unterminated = startup(&[("user", "u")]);
        unterminated.pop();
        let len = (unterminated.len() as u32).to_be_bytes();
        unterminated[..4].copy_from_slice(&len);
        assert!(matches!(
            read(unterminated).await.0,
            Err(StartupError::Malformed(_))
        ));
    }

    #[test]
    fn fatal_is_a_well_formed_error_response() {
        let e = fatal("28000", "no");
        assert_eq!(e[0], b'E');
        assert_eq!(
            u32::from_be_bytes(e[1..5].try_into().unwrap()) as usize,
            e.len() - 1
        );
        assert!(e.ends_with(b"Mno\0\0"));
    }
}
