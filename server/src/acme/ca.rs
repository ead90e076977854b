//! Talking to the CA: the account, one order with its challenges (the
//! TLS-ALPN-01 certificate, the HTTP-01 answer, the DNS hook), and the
//! certificates cached on disk. Called by the worker in `acme.rs`, which
//! decides when and what to order.

use super::*;

impl Worker {
    pub(super) async fn account(&self) -> Result<Account, AcmeError> {
        let err = |e: &dyn std::fmt::Display| AcmeError::Account(e.to_string());
        let builder = || match &self.cfg.root {
            Some(root) => Account::builder_with_root(root).map_err(|e| {
                AcmeError::Account(format!(
                    "--acme-root {}: {e}; pass the PEM file of the CA's TLS root",
                    root.display()
                ))
            }),
            None => Account::builder().map_err(|e| err(&chain(&e))),
        };
        let path = self.dir.join("account.json");
        if let Ok(json) = tokio::fs::read(&path).await {
            match serde_json::from_slice::<AccountCredentials>(&json) {
                Ok(creds) => {
                    return builder()?
                        .from_credentials(creds)
                        .await
                        .map_err(|e| err(&format!("restoring {}: {}", path.display(), chain(&e))))
                }
                Err(e) => warn!("ignoring {}: {e}; creating a new account", path.display()),
            }
        }
        let contact = self.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.cfg.directory.clone(),
                None,
            )
            .await
            .map_err(|e| {
                err(&format!(
                    "cannot create an account at {}: {}; check --acme-directory, the network, and \
                     (for a private CA) --acme-root",
                    self.cfg.directory,
                    chain(&e)
                ))
            })?;
        let json = serde_json::to_vec(&creds).map_err(|e| err(&e))?;
        write_private(&path, &json)
            .await
            .map_err(|e| err(&format!("cannot save {}: {e}", path.display())))?;
        info!(directory = %self.cfg.directory, "ACME account created");
        Ok(account)
    }

    pub(super) async fn order_once(&self, names: &[String]) -> Result<Cert, AcmeError> {
        let account = self
            .account
            .as_ref()
            .ok_or_else(|| AcmeError::Account("not created yet".into()))?;
        let fail = |why: String| AcmeError::Order {
            names: names.join(", "),
            why,
        };
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| fail(chain(&e)))?;
        let mut cleanup: Vec<Cleanup> = Vec::new();
        let result = async {
            // First publish every response (two TXT values share one name
            // for DOMAIN and *.DOMAIN), then tell the CA to validate.
            let mut ready = Vec::new();
            let mut auths = order.authorizations();
            while let Some(a) = auths.next().await {
                let mut a = a.map_err(|e| fail(chain(&e)))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(fail(format!("authorization is {other:?}"))),
                }
                let ident = a.identifier();
                let wildcard = ident.wildcard;
                let name = ident.to_string();
                let kind = if wildcard || self.cfg.dns_hook.is_some() && names.len() > 1 {
                    ChallengeType::Dns01
                } else {
                    match self.cfg.challenge {
                        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                        Challenge::Http01 => ChallengeType::Http01,
                    }
                };
                let ch = a
                    .challenge(kind.clone())
                    .ok_or_else(|| fail(format!("the CA offers no {kind:?} challenge for {name}")))?;
                let ka = ch.key_authorization();
                match kind {
                    ChallengeType::TlsAlpn01 => {
                        let digest = ka.digest().as_ref().to_vec();
                        let n = name.clone();
                        let key = tokio::task::spawn_blocking(move || alpn_certificate(&n, &digest))
                            .await
                            .map_err(|e| fail(chain(&e)))?
                            .map_err(fail)?;
                        self.store.set_alpn_challenge(&name, key);
                        cleanup.push(Cleanup::Alpn(name.clone()));
                    }
                    ChallengeType::Http01 => {
                        self.store.set_http01(&ch.token, ka.as_str().to_owned());
                        cleanup.push(Cleanup::Http(ch.token.clone()));
                    }
                    _ => {
                        let base = name.trim_start_matches("*.");
                        let record = format!("_acme-challenge.{base}");
                        let value = ka.dns_value();
                        self.hook("set", &record, &value).await?;
                        cleanup.push(Cleanup::Dns(record, value));
                    }
                }
                ready.push(ch.url.clone());
            }
            let mut auths = order.authorizations();
            while let Some(a) = auths.next().await {
                let mut a = a.map_err(|e| fail(chain(&e)))?;
                let t = a
                    .challenges
                    .iter()
                    .find(|c| ready.contains(&c.url))
                    .map(|c| c.r#type.clone());
                if let Some(mut ch) = t.and_then(|t| a.challenge(t)) {
                    ch.set_ready().await.map_err(|e| fail(chain(&e)))?;
                }
            }
            let retry = RetryPolicy::default().timeout(Duration::from_secs(120));
            match order.poll_ready(&retry).await {
                Ok(OrderStatus::Ready) => Ok(()),
                Ok(status) => Err(fail(format!(
                    "the CA could not validate it (order {status:?}); check that the name resolves to \
                     this server and that the CA reaches its {} port",
                    match self.cfg.challenge {
                        Challenge::TlsAlpn01 => "https (443)",
                        Challenge::Http01 => "plain http (80)",
                    }
                ))),
                Err(e) => Err(fail(chain(&e))),
            }
        }
        .await;
        for c in cleanup {
            match c {
                Cleanup::Alpn(n) => self.store.clear_alpn_challenge(&n),
                Cleanup::Http(t) => self.store.clear_http01(&t),
                Cleanup::Dns(record, value) => {
                    if let Err(e) = self.hook("clear", &record, &value).await {
                        warn!("{e}");
                    }
                }
            }
        }
        result?;
        let names_owned = names.to_vec();
        let (key_pem, csr) = tokio::task::spawn_blocking(move || csr_for(&names_owned))
            .await
            .map_err(|e| fail(chain(&e)))?
            .map_err(fail)?;
        order
            .finalize_csr(&csr)
            .await
            .map_err(|e| fail(chain(&e)))?;
        let chain = order
            .poll_certificate(&RetryPolicy::default().timeout(Duration::from_secs(120)))
            .await
            .map_err(|e| fail(chain(&e)))?;
        let cert = self
            .save_and_load(&names[0], chain.as_bytes(), key_pem.as_bytes())
            .await
            .map_err(fail)?;
        Ok(cert)
    }

    /// Runs the DNS hook once.
    async fn hook(&self, action: &str, name: &str, value: &str) -> Result<(), AcmeError> {
        let Some(hook) = &self.cfg.dns_hook else {
            return Err(AcmeError::Order {
                names: name.to_owned(),
                why: "a DNS-01 challenge needs --acme-dns-hook".into(),
            });
        };
        let fail = |why: String| AcmeError::Hook {
            hook: hook.display().to_string(),
            why,
        };
        debug!(%action, %name, "running the DNS hook");
        let child = tokio::process::Command::new(hook)
            .arg(action)
            .arg(name)
            .arg(value)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(HOOK_TIMEOUT, child).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(fail(format!(
                "`{action} {name}` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
            Ok(Err(e)) => Err(fail(format!("cannot run it: {e}"))),
            Err(_) => Err(fail(format!(
                "`{action} {name}` did not finish within {HOOK_TIMEOUT:?}"
            ))),
        }
    }

    /// Writes a new certificate to the cache and builds it.
    async fn save_and_load(&self, first: &str, chain: &[u8], key: &[u8]) -> Result<Cert, String> {
        let base = file_name(first);
        let crt = self.dir.join(format!("{base}.crt"));
        let keyf = self.dir.join(format!("{base}.key"));
        write_private(&keyf, key)
            .await
            .map_err(|e| format!("cannot save {}: {e}", keyf.display()))?;
        write_private(&crt, chain)
            .await
            .map_err(|e| format!("cannot save {}: {e}", crt.display()))?;
        let pair = tunnel_lib::tls::load_pair(&crt, &keyf)
            .await
            .map_err(|e| e.to_string())?;
        Cert::from_pair(pair, &crt).map_err(|e| e.to_string())
    }

    /// Certificates cached by an earlier run (called before the server
    /// serves: a restarted server presents them from its first handshake).
    pub async fn load_cache(&mut self) {
        let Ok(mut dir) = tokio::fs::read_dir(&self.dir).await else {
            return;
        };
        while let Ok(Some(entry)) = dir.next_entry().await {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "crt") {
                continue;
            }
            let key = path.with_extension("key");
            match tunnel_lib::tls::load_pair(&path, &key).await {
                Ok(pair) => match Cert::from_pair(pair, &path) {
                    Ok(c) if c.not_after > SystemTime::now() => {
                        debug!(names = ?c.names, "certificate loaded from the cache");
                        self.store.add_acme(Arc::new(c));
                    }
                    Ok(_) => debug!("{} has expired; ignoring it", path.display()),
                    Err(e) => warn!("ignoring {}: {e}", path.display()),
                },
                Err(e) => warn!("ignoring {}: {e}", path.display()),
            }
        }
    }
}

enum Cleanup {
    Alpn(String),
    Http(String),
    Dns(String, String),
}

/// The TLS-ALPN-01 certificate (RFC 8737): self-signed for `name`, with
/// the key authorization's digest in the acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// A fresh key (PEM) and a CSR (DER) for `names`.
fn csr_for(names: &[String]) -> Result<(String, Vec<u8>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// A cache file name for a certificate's first name.
fn file_name(name: &str) -> String {
    name.replace('*', "_wildcard_")
}

/// Writes a file readable by the owner only, atomically.
async fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    tunnel_lib::paths::write_atomic(path, data, 0o600).await
}

/// An error with its causes (`client error (Connect): … invalid peer
/// certificate: UnknownIssuer`): the top one alone rarely says what to fix.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}
