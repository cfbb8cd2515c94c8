//! Cluster certificate authorities and the client certificates they issue.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::keys::{ClientPublicKey, PublicKeyAlgorithm};
use crate::{AuthorityError, random_serial};

/// The signing seam of a CA. Software keys (`rcgen::KeyPair`) implement it; a PKCS#11 or KMS signer only
/// has to implement `rcgen::SigningKey` (its public key, its algorithm, and `sign`), see docs/keys.md.
pub trait CaSigner: rcgen::SigningKey + Send + Sync {}

impl<T: rcgen::SigningKey + Send + Sync> CaSigner for T {}

impl rcgen::PublicKeyData for Box<dyn CaSigner> {
    fn der_bytes(&self) -> &[u8] {
        self.as_ref().der_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.as_ref().algorithm()
    }
}

impl rcgen::SigningKey for Box<dyn CaSigner> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.as_ref().sign(msg)
    }
}

/// Issued certificates start a minute in the past, so a client whose clock lags a little accepts them.
const BACKDATE: Duration = Duration::minutes(1);

pub struct CaParams {
    pub common_name: String,
    pub organization: Option<String>,
    pub validity: Duration,
}

/// What the store persists for a CA. The key is PKCS#8 DER and is wiped from memory when dropped.
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
}

/// A loaded CA, ready to issue.
pub struct ClusterCa {
    cert_pem: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, Box<dyn CaSigner>>,
}

pub struct LeafRequest<'a> {
    pub public_key: &'a ClientPublicKey,
    pub subject_common_name: &'a str,
    pub subject_organization: Option<&'a str>,
    pub lifetime: Duration,
}

#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// PEM, ending with a newline (the Python connector concatenates chain elements without a separator).
    pub cert_pem: String,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

fn cert_error(e: rcgen::Error) -> AuthorityError {
    AuthorityError::Certificate(e.to_string())
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn backdated(now: OffsetDateTime) -> Result<OffsetDateTime, AuthorityError> {
    now.checked_sub(BACKDATE)
        .ok_or(AuthorityError::LifetimeTooLong)
}

/// X.509 times have whole seconds: callers are told exactly what the certificate says.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

fn with_newline(mut pem: String) -> String {
    if !pem.ends_with('\n') {
        pem.push('\n');
    }
    pem
}

impl ClusterCa {
    /// A new self-signed ECDSA P-256 CA that may sign end-entity certificates only (path length 0).
    pub fn generate(
        params: &CaParams,
        now: OffsetDateTime,
    ) -> Result<(ClusterCa, CaMaterial), AuthorityError> {
        if params.validity <= Duration::ZERO {
            return Err(AuthorityError::BadLifetime);
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AuthorityError::KeyGeneration(e.to_string()))?;
        let mut cert = CertificateParams::default();
        cert.distinguished_name = name(&params.common_name, params.organization.as_deref());
        cert.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        cert.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        cert.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        cert.not_before = backdated(now)?;
        // `+` on OffsetDateTime panics past year 9999; the validity comes from configuration.
        cert.not_after = now
            .checked_add(params.validity)
            .ok_or(AuthorityError::LifetimeTooLong)?;
        let certificate = cert.self_signed(&key).map_err(cert_error)?;
        let material = CaMaterial {
            cert_pem: with_newline(certificate.pem()),
            key_pkcs8_der: Zeroizing::new(key.serialize_der()),
        };
        let ca = ClusterCa::from_material(&material.cert_pem, &material.key_pkcs8_der)?;
        Ok((ca, material))
    }

    /// Loads a stored CA, checking that the key belongs to the certificate.
    pub fn from_material(
        cert_pem: &str,
        key_pkcs8_der: &[u8],
    ) -> Result<ClusterCa, AuthorityError> {
        let key = KeyPair::try_from(key_pkcs8_der)
            .map_err(|e| AuthorityError::BadMaterial(format!("CA key: {e}")))?;
        ClusterCa::with_signer(cert_pem, Box::new(key))
    }

    /// A CA whose key lives elsewhere (an HSM through PKCS#11, a cloud KMS): anything that signs as
    /// `rcgen::SigningKey` does. Checks that the signer's public key is the certificate's.
    pub fn with_signer(
        cert_pem: &str,
        key: Box<dyn CaSigner>,
    ) -> Result<ClusterCa, AuthorityError> {
        let bad = |m: &str| AuthorityError::BadMaterial(m.to_string());
        let block = pem::parse(cert_pem).map_err(|_| bad("CA certificate is not PEM"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
            .map_err(|_| bad("CA certificate does not parse"))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(bad("CA key does not match the CA certificate"));
        }
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|_| bad("CA expiry out of range"))?;
        let issuer = Issuer::from_ca_cert_der(&block.contents().to_vec().into(), key)
            .map_err(|e| bad(&format!("CA certificate: {e}")))?;
        Ok(ClusterCa {
            cert_pem: with_newline(cert_pem.to_string()),
            not_after,
            issuer,
        })
    }

    /// notBefore (backdated for clock skew) and notAfter of a leaf: `now + lifetime`, never past the CA's
    /// own expiry. A lifetime too long for the calendar simply ends with the CA.
    fn leaf_validity(
        &self,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<(OffsetDateTime, OffsetDateTime), AuthorityError> {
        let not_after = now
            .checked_add(lifetime)
            .map_or(self.not_after, |end| end.min(self.not_after));
        Ok((whole_seconds(backdated(now)?), whole_seconds(not_after)))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// A TLS server certificate (serverAuth) for `dns_names` and `ips`, never outliving the CA.
    pub fn issue_server_certificate(
        &self,
        public_key: &ClientPublicKey,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, AuthorityError> {
        if lifetime <= Duration::ZERO {
            return Err(AuthorityError::BadLifetime);
        }
        if self.not_after <= now {
            return Err(AuthorityError::CaExpired(self.not_after));
        }
        let serial = random_serial();
        let mut params = CertificateParams::default();
        let cn = dns_names
            .first()
            .cloned()
            .or_else(|| ips.first().map(|ip| ip.to_string()))
            .unwrap_or_default();
        params.distinguished_name = name(&cn, Some("clustercred"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(public_key.algorithm(), PublicKeyAlgorithm::Rsa { .. }) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for dns in dns_names {
            let dns = rcgen::string::Ia5String::try_from(dns.as_str()).map_err(cert_error)?;
            params.subject_alt_names.push(rcgen::SanType::DnsName(dns));
        }
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = self.leaf_validity(lifetime, now)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(public_key.spki_der()).map_err(cert_error)?;
        let cert = params.signed_by(&spki, &self.issuer).map_err(cert_error)?;
        Ok(IssuedCertificate {
            cert_pem: with_newline(cert.pem()),
            serial_hex: hex::encode(serial),
            not_before,
            not_after,
        })
    }

    /// A client certificate (clientAuth, not a CA) for `public_key`, never outliving the CA.
    pub fn issue_client_certificate(
        &self,
        req: &LeafRequest<'_>,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, AuthorityError> {
        if req.lifetime <= Duration::ZERO {
            return Err(AuthorityError::BadLifetime);
        }
        if self.not_after <= now {
            return Err(AuthorityError::CaExpired(self.not_after));
        }
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(req.subject_common_name, req.subject_organization);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(req.public_key.algorithm(), PublicKeyAlgorithm::Rsa { .. }) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = self.leaf_validity(req.lifetime, now)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let spki =
            rcgen::SubjectPublicKeyInfo::from_der(req.public_key.spki_der()).map_err(cert_error)?;
        let cert = params.signed_by(&spki, &self.issuer).map_err(cert_error)?;
        Ok(IssuedCertificate {
            cert_pem: with_newline(cert.pem()),
            serial_hex: hex::encode(serial),
            not_before,
            not_after,
        })
    }
}
