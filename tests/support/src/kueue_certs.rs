//! The certificate Kueue's webhooks serve (and Kubeflow training-operator's, in the migration
//! test: the same rotator), made the way its certificate rotator accepts:
//! an RSA CA named `kueue-ca` (PKCS#1 key, which the rotator parses) and a server
//! certificate for the webhook Service's DNS name plus 127.0.0.1, the address the API
//! server calls.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};

use crate::pki::b64;

/// The CA's name: the rotator checks the CA certificate against it as a DNS name.
pub const CA_NAME: &str = "kueue-ca";

/// PEM texts of the CA and the server certificate.
pub struct WebhookCerts {
    pub ca_cert: String,
    /// PKCS#1 (`RSA PRIVATE KEY`).
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
}

impl WebhookCerts {
    /// A fresh CA and a server certificate for `dns_name` and 127.0.0.1.
    pub fn generate(dns_name: &str) -> Result<WebhookCerts> {
        Self::generate_with_ca(dns_name, CA_NAME, "kueue")
    }

    /// The same with another CA name and organization (another operator's rotator, such as
    /// Kubeflow's training-operator's, checks its own CA name).
    pub fn generate_with_ca(dns_name: &str, ca_name: &str, org: &str) -> Result<WebhookCerts> {
        let rsa_key =
            rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).context("generating the RSA CA key")?;
        let ca_key = rsa_key.to_pkcs1_pem(LineEnding::LF).context("encoding the CA key")?.to_string();
        let pkcs8 = rsa_key.to_pkcs8_pem(LineEnding::LF).context("encoding the CA key")?;
        let signer = KeyPair::from_pem_and_sign_algo(&pkcs8, &PKCS_RSA_SHA256)?;

        let mut ca = CertificateParams::new(vec![ca_name.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ca_name);
        dn.push(DnType::OrganizationName, org);
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, signer)?;

        let mut server = CertificateParams::new(vec![dns_name.to_string(), "127.0.0.1".to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        server.distinguished_name = dn;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;
        Ok(WebhookCerts {
            ca_cert: ca.pem(),
            ca_key,
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
        })
    }

    /// The CA certificate, base64 as `caBundle` fields want it.
    pub fn ca_bundle(&self) -> String {
        b64(&self.ca_cert)
    }

    /// The Secret the rotator reads (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`).
    pub fn secret(&self, name: &str, namespace: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "data": {
                "ca.crt": b64(&self.ca_cert), "ca.key": b64(&self.ca_key),
                "tls.crt": b64(&self.server_cert), "tls.key": b64(&self.server_key)
            }
        })
    }
}
