//! The AlloyDB connectors' metadata exchange: after the TLS handshake a client that asked for it
//! (`use_metadata_exchange` when it got its certificate) sends a 4-byte big-endian length and a
//! `MetadataExchangeRequest`, and waits for a `MetadataExchangeResponse` in the same framing before it speaks
//! PostgreSQL.

use clustercred_proto::google::cloud::alloydb::connectors::v1::{
    MetadataExchangeRequest, MetadataExchangeResponse, metadata_exchange_response::ResponseCode,
};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request accepted. An OAuth2 access token is well under 4 KiB; the clients' own replies are kept
/// under 16 KiB, and so are requests here.
pub const MAX_FRAME: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MdxError {
    #[error("the metadata exchange request is empty")]
    Empty,
    #[error("the metadata exchange request is {0} bytes, more than {MAX_FRAME}")]
    Oversized(usize),
    #[error("the metadata exchange request is not a MetadataExchangeRequest: {0}")]
    Malformed(String),
    #[error("the connection ended during the metadata exchange")]
    Closed,
}

/// Reads one frame; never reads more than its length prefix promises, nor a prefix past [`MAX_FRAME`].
async fn read_frame<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<M, MdxError> {
    let mut prefix = [0u8; 4];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|_| MdxError::Closed)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(MdxError::Empty);
    }
    if len > MAX_FRAME {
        return Err(MdxError::Oversized(len));
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|_| MdxError::Closed)?;
    M::decode(body.as_slice()).map_err(|e| MdxError::Malformed(e.to_string()))
}

/// Length and message in one buffer: the Go connector reads a reply with a single read.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The instance endpoint's side: one framed request.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<MetadataExchangeRequest, MdxError> {
    read_frame(reader).await
}

/// The client's side (`clustercred alloydb proxy`): one framed request.
pub fn request(message: &MetadataExchangeRequest) -> Vec<u8> {
    frame(message)
}

/// The client's side: the framed response.
pub async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<MetadataExchangeResponse, MdxError> {
    read_frame(reader).await
}

/// A framed response.
pub fn response(result: Result<(), &str>) -> Vec<u8> {
    frame(&match result {
        Ok(()) => MetadataExchangeResponse {
            response_code: ResponseCode::Ok as i32,
            error: String::new(),
        },
        Err(reason) => MetadataExchangeResponse {
            response_code: ResponseCode::Error as i32,
            // Bounded, so the reply stays far below the clients' 16 KiB.
            error: reason.chars().take(1024).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustercred_proto::google::cloud::alloydb::connectors::v1::metadata_exchange_request::AuthType;

    #[test]
    fn ok_is_the_six_bytes_clients_expect() {
        assert_eq!(response(Ok(())), [0, 0, 0, 2, 8, 1]);
        let err = response(Err("no"));
        let decoded = MetadataExchangeResponse::decode(&err[4..]).unwrap();
        assert_eq!(decoded.response_code, ResponseCode::Error as i32);
        assert_eq!(decoded.error, "no");
        assert_eq!(
            u32::from_be_bytes(err[..4].try_into().unwrap()) as usize,
            err.len() - 4
        );
    }

    #[tokio::test]
    async fn requests_are_read_and_bounded() {
        let req = MetadataExchangeRequest {
            user_agent: "test".into(),
            auth_type: AuthType::AutoIam as i32,
            oauth2_token: "tok".into(),
        };
        let body = req.encode_to_vec();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b"trailing PostgreSQL bytes");
        let mut reader = frame.as_slice();
        assert_eq!(read_request(&mut reader).await.unwrap(), req);
        assert_eq!(
            reader, b"trailing PostgreSQL bytes",
            "reads exactly one frame"
        );

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(
            read_request(&mut huge.as_slice()).await,
            Err(MdxError::Oversized(MAX_FRAME + 1))
        );
        assert_eq!(
            read_request(&mut [0u8, 0, 0, 0].as_slice()).await,
            Err(MdxError::Empty)
        );
        assert_eq!(
            read_request(&mut [0u8, 0, 0, 9, 1].as_slice()).await,
            Err(MdxError::Closed)
        );
        let garbage = [0u8, 0, 0, 2, 0xff, 0xff];
        assert!(matches!(
            read_request(&mut garbage.as_slice()).await,
            Err(MdxError::Malformed(_))
        ));
    }
}
