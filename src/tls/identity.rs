//! What a certificate says about its holder: the identity a client
//! certificate grants (for `[auth]`), and when a served certificate expires.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The identity of a client certificate, as the policy names it: its first
/// URI SAN (a SPIFFE ID, say), else its first DNS SAN, else its subject's
/// common name. `None` when it has none of these or does not parse (it was
/// already verified by then, so that is a certificate naming nobody).
pub fn client_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        });
        let dns = || {
            names.iter().find_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
        };
        if let Some(found) = uri.or_else(dns) {
            return Some(found);
        }
    }
    parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// When the certificate stops being valid, in seconds since the Unix epoch.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_uri_san_wins_then_a_dns_san_then_the_common_name() {
        let mut params =
            rcgen::CertificateParams::new(vec!["checkout.internal".to_string()]).unwrap();
        params.subject_alt_names.insert(
            0,
            rcgen::SanType::URI("spiffe://fleet/checkout".try_into().unwrap()),
        );
        assert_eq!(
            client_identity(&cert(params)).as_deref(),
            Some("spiffe://fleet/checkout")
        );

        let params = rcgen::CertificateParams::new(vec!["orders.internal".to_string()]).unwrap();
        assert_eq!(
            client_identity(&cert(params)).as_deref(),
            Some("orders.internal")
        );

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing");
        assert_eq!(client_identity(&cert(params)).as_deref(), Some("billing"));
    }

    #[test]
    fn expiry_is_read_from_the_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        assert_eq!(not_after(&cert(params)), Some(1_925_078_400));
    }
}
