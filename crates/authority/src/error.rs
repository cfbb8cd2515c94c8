/// Failures inside the authority that are not the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("stored key material is unusable: {0}")]
    BadMaterial(String),
    #[error("the CA expired at {0}")]
    CaExpired(time::OffsetDateTime),
    #[error("requested lifetime must be positive")]
    BadLifetime,
    #[error("requested lifetime ends beyond the representable range of dates")]
    LifetimeTooLong,
    #[error("token signing failed: {0}")]
    Signing(String),
}
