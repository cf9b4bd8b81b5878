//! A TLS listener's certificates: loaded from their PEM files (each key checked against
//! its certificate), indexed by the DNS names of their subject alternative names, and
//! chosen per handshake by the client's SNI ([`Certificates`]): an exact name first, then
//! a wildcard (`*.example.com` covers one label), else the first certificate of the list,
//! which is also the one a client without SNI gets. Also the RFC 4514 text of a client
//! certificate's subject ([`subject`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{TlsError, provider};
use crate::config::{CertificateFiles, read_certificates, read_key};

/// Certificates by server name. Built once per (re)load, read by every handshake.
#[derive(Debug)]
pub(crate) struct Certificates {
    /// Exact names, lower case.
    exact: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// `*.suffix` names, by `suffix`, lower case.
    wildcard: HashMap<Box<str>, Arc<CertifiedKey>>,
    /// The first certificate: no SNI, or a name no certificate covers.
    default: Arc<CertifiedKey>,
}

impl Certificates {
    /// Loads every certificate of the list (the first is the default); a name covered by
    /// two certificates goes to the first.
    pub(crate) fn load(files: &[CertificateFiles]) -> Result<Self, TlsError> {
        let provider = provider();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for f in files {
            let fail = |message: String| TlsError::File { at: f.at.clone(), message };
            let chain = read_certificates(&f.cert).map_err(fail)?;
            let key = read_key(&f.key).map_err(fail)?;
            let names: Vec<String> = webpki::EndEntityCert::try_from(&chain[0])
                .map_err(|e| fail(format!("{}: not an X.509 certificate weir can use: {e}", f.cert.display())))?
                .valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect();
            let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                fail(match e {
                    rustls::Error::InconsistentKeys(_) => {
                        format!("{}: the key does not match the certificate {}", f.key.display(), f.cert.display())
                    }
                    e => format!("{}: unusable private key: {e}", f.key.display()),
                })
            })?;
            let certified = Arc::new(certified);
            for name in names {
                let name = name.trim_end_matches('.');
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.into()).or_insert_with(|| certified.clone()),
                    None => exact.entry(name.into()).or_insert_with(|| certified.clone()),
                };
            }
            default.get_or_insert(certified);
        }
        // The config refuses an empty list; this is for a caller that did not ask it.
        let Some(default) = default else {
            return Err(TlsError::Settings(rustls::Error::General("no certificate".into())));
        };
        Ok(Self { exact, wildcard, default })
    }

    /// The certificate for a server name (`None`: no SNI).
    pub(crate) fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else { return &self.default };
        let name = name.trim_end_matches('.');
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(c) = self.wildcard.get(parent)
        {
            return c;
        }
        &self.default
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).clone())
    }
}

/// The subject of a certificate in RFC 4514 form (`CN=client,O=Example`: the last
/// relative name first, as OpenSSL's `-nameopt RFC2253` and nginx's `$ssl_client_s_dn`
/// print it); `None` if the certificate cannot be parsed.
pub(crate) fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    rfc4514(cert.subject())
}

/// One DER element: (tag, contents, rest).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// RFC 4514 text of a Name's contents (a sequence of RDN sets).
fn rfc4514(mut name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (tag, mut set, rest) = element(name)?;
        if tag != 0x31 {
            return None;
        }
        name = rest;
        let mut rdn = String::new();
        while !set.is_empty() {
            let (tag, atv, rest) = element(set)?;
            set = rest;
            let (oid_tag, oid, value) = element(atv).filter(|_| tag == 0x30)?;
            if oid_tag != 0x06 {
                return None;
            }
            if !rdn.is_empty() {
                rdn.push('+');
            }
            let short = match oid {
                [0x55, 0x04, 0x03] => Some("CN"),
                [0x55, 0x04, 0x06] => Some("C"),
                [0x55, 0x04, 0x07] => Some("L"),
                [0x55, 0x04, 0x08] => Some("ST"),
                [0x55, 0x04, 0x09] => Some("STREET"),
                [0x55, 0x04, 0x0a] => Some("O"),
                [0x55, 0x04, 0x0b] => Some("OU"),
                [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => Some("DC"),
                [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => Some("UID"),
                _ => None,
            };
            let text = element(value).and_then(|(vtag, v, _)| match vtag {
                // UTF8String, PrintableString, IA5String, TeletexString (read as Latin-1
                // would be wrong; only its ASCII form is taken).
                0x0c | 0x13 | 0x16 | 0x14 => std::str::from_utf8(v).ok(),
                _ => None,
            });
            match (short, text) {
                (Some(short), Some(text)) => {
                    rdn.push_str(short);
                    rdn.push('=');
                    escape(&mut rdn, text);
                }
                _ => {
                    // The dotted OID and the value's DER in hex (RFC 4514 §2.4).
                    dotted(&mut rdn, oid)?;
                    rdn.push_str("=#");
                    for b in value {
                        let _ = write!(rdn, "{b:02x}");
                    }
                }
            }
        }
        rdns.push(rdn);
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// Appends an attribute value with RFC 4514's escapes.
fn escape(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

/// Appends an OID in dotted form.
fn dotted(out: &mut String, oid: &[u8]) -> Option<()> {
    let mut arcs = Vec::new();
    let mut n: u64 = 0;
    for &b in oid {
        n = n.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(n);
            n = 0;
        }
    }
    let (&first, rest) = arcs.split_first()?;
    let (a, b) = if first < 80 { (first / 40, first % 40) } else { (2, first - 80) };
    let _ = write!(out, "{a}.{b}");
    for arc in rest {
        let _ = write!(out, ".{arc}");
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: rcgen::DistinguishedName, sans: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn subject_is_rfc4514_last_name_first_and_escaped() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "SE");
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::CommonName, " alice+bob ");
        let cert = cert_with(dn, &["client.test"]);
        assert_eq!(subject(&cert).unwrap(), "CN=\\ alice\\+bob\\ ,O=Acme\\, Inc.,C=SE");
    }

    #[test]
    fn unknown_attributes_are_dotted_and_hex() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]), "a@b");
        let cert = cert_with(dn, &["client.test"]);
        // IA5String? rcgen writes custom attributes as UTF8String: tag 0c, length 3.
        assert_eq!(subject(&cert).unwrap(), "1.2.840.113549.1.9.1=#0c03614062");
    }

    #[test]
    fn truncated_names_are_refused_not_misread() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "x");
        let cert = cert_with(dn, &["client.test"]);
        let parsed = webpki::EndEntityCert::try_from(&cert).unwrap();
        let name = parsed.subject();
        for cut in 0..name.len() {
            assert_eq!(
                rfc4514(&name[..cut]).filter(|s| !s.is_empty() || cut == 0),
                if cut == 0 { Some(String::new()) } else { None },
                "cut at {cut}"
            );
        }
    }
}
