//! The vault: every secret encrypted at rest with XChaCha20-Poly1305.
//!
//! Envelope encryption: a **master key** (32 bytes, from `HLBRIDGE_MASTER_KEY` as base64, or
//! the key file `master.key` in the data directory, created with mode 0600 on first use)
//! wraps the **data keys** of a key ring kept in the database (`vault_keys`, each with an id).
//! Secrets are sealed with the active data key:
//!
//! ```text
//! hlv1.<key id>.<base64url(nonce[24] ‖ ciphertext ‖ tag[16])>
//! ```
//!
//! and the associated data binds a ciphertext to its row — `(table, row id, column, key
//! id)` — so a ciphertext copied to another row (or another column) does not open.
//!
//! [`Vault::rotate`] creates a new data key, makes it active, re-encrypts every secret still
//! sealed with an older key (compare-and-swap per row, so concurrent writers are never
//! overwritten) and deletes the old key once nothing uses it; the database's foreign key
//! refuses to delete a key still in use, and a secret sealed with a deleted key is refused
//! too, so the writer re-seals under the new key. Readers keep working throughout: an
//! unknown key id makes the vault reload its ring.
//!
//! [`rotate_master_key`] replaces the master key itself: the new key is written next to the
//! old one (`master.key.next`), every data key is re-wrapped under it in one transaction, and
//! only then is the file moved over `master.key` — a crash in between leaves both files, and
//! the next start picks whichever one the database was wrapped with. Secrets themselves are
//! not touched (the data keys do not change). Running processes keep their unwrapped data
//! keys and read the new key file when they meet a key wrapped under it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use parking_lot::RwLock;
use zeroize::{Zeroize, Zeroizing};

use super::secret::{Secret, fill_random, sha256_hex};
use crate::store::security::{SealedSecret, SecretRef, SecurityStore, VaultKeyRecord};
use crate::store::{StoreError, now};

/// The environment variable holding the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "HLBRIDGE_MASTER_KEY";

/// The key file's name in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// The next master key during a master-key rotation (see the module docs).
pub const NEXT_MASTER_KEY_FILE: &str = "master.key.next";

const SEAL_PREFIX: &str = "hlv1";

/// How long the active key id is trusted before the ring is re-read for sealing (another
/// process may have rotated).
const RING_TTL: Duration = Duration::from_secs(5);

/// Vault failures. None of them carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The master key is not valid.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The key file could not be read or created.
    #[error("master key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file can be read by other users.
    #[error(
        "master key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The database's keys are wrapped with another master key.
    #[error(
        "the master key does not match this database (its keys were wrapped with master key {expected}, this one is {given}); set {MASTER_KEY_ENV} or restore {MASTER_KEY_FILE}"
    )]
    MasterKeyMismatch {
        /// Fingerprint the database expects.
        expected: String,
        /// Fingerprint of the key given.
        given: String,
    },
    /// A secret did not decrypt (tampered, moved from another row, or a wrong key).
    #[error("secret {0} could not be decrypted (tampered with, or moved from another row)")]
    Decrypt(String),
    /// A sealed value is malformed.
    #[error("sealed secret {0} is malformed")]
    Malformed(String),
    /// A sealed value names a key the ring does not have.
    #[error("secret {secret} is sealed with vault key {key}, which is not in the key ring")]
    UnknownKey {
        /// The secret.
        secret: String,
        /// The key id.
        key: String,
    },
}

/// Where the master key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `HLBRIDGE_MASTER_KEY`.
    Env,
    /// An existing key file.
    File(PathBuf),
    /// A key file created now.
    Created(PathBuf),
    /// Given by the program (tests).
    Given,
}

/// The master key. Wiped from memory on drop; never printed.
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    id: String,
    source: KeySource,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn fingerprint(bytes: &[u8; 32]) -> String {
    let mut input = b"hlbridge master key id\0".to_vec();
    input.extend_from_slice(bytes);
    let fp = sha256_hex(&input);
    input.zeroize();
    fp[..16].to_owned()
}

impl MasterKey {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        let id = fingerprint(&bytes);
        MasterKey {
            bytes: Zeroizing::new(bytes),
            id,
            source: KeySource::Given,
        }
    }

    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes);
        let key = MasterKey::from_bytes(bytes);
        bytes.zeroize();
        key
    }

    /// A key from base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<MasterKey, VaultError> {
        let t = text.trim();
        let decoded = STANDARD
            .decode(t)
            .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
            .map_err(|_| VaultError::MasterKey("not valid base64".into()))?;
        let mut decoded = Zeroizing::new(decoded);
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
            VaultError::MasterKey(format!(
                "must be 32 bytes (base64 of 32 random bytes), got {}",
                decoded.len()
            ))
        })?;
        decoded.zeroize();
        Ok(MasterKey::from_bytes(bytes))
    }

    /// The key as base64 (to back it up or move it to `HLBRIDGE_MASTER_KEY`).
    pub fn to_base64(&self) -> Secret {
        Secret::new(STANDARD.encode(*self.bytes))
    }

    /// A short public fingerprint (safe to print and store).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the key came from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Loads the master key: `HLBRIDGE_MASTER_KEY` if set, else the key file
    /// `<data_dir>/master.key`, created (mode 0600) with a random key if missing.
    pub fn load(data_dir: &Path) -> Result<MasterKey, VaultError> {
        let env = std::env::var(MASTER_KEY_ENV)
            .ok()
            .filter(|v| !v.trim().is_empty());
        Self::load_from(env.as_deref(), data_dir)
    }

    /// [`MasterKey::load`] with the environment value given.
    pub fn load_from(env: Option<&str>, data_dir: &Path) -> Result<MasterKey, VaultError> {
        if let Some(v) = env {
            let mut k = MasterKey::from_base64(v)
                .map_err(|e| VaultError::MasterKey(format!("{MASTER_KEY_ENV}: {e}")))?;
            k.source = KeySource::Env;
            return Ok(k);
        }
        let path = data_dir.join(MASTER_KEY_FILE);
        match read_key_file(&path) {
            Ok(mut k) => {
                k.source = KeySource::File(path);
                Ok(k)
            }
            Err(VaultError::KeyFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                create_key_file(data_dir, &path)
            }
            Err(e) => Err(e),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.bytes).into())
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey, VaultError> {
    let err = |source| VaultError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(err)?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(VaultError::KeyFilePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    MasterKey::from_base64(&text)
        .map_err(|e| VaultError::MasterKey(format!("{}: {e}", path.display())))
}

fn create_key_file(dir: &Path, path: &Path) -> Result<MasterKey, VaultError> {
    use std::io::Write;
    let err = |source| VaultError::KeyFile {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // Written to a private temporary file first, then linked into place: another process
    // starting at the same moment sees either no key file or a complete one.
    let tmp = dir.join(format!(
        ".{MASTER_KEY_FILE}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let key = MasterKey::generate();
    let written = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(key.to_base64().expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                key_id = key.id(),
                "created a new vault master key file; back it up (without it the stored secrets cannot be read)"
            );
            Ok(MasterKey {
                source: KeySource::Created(path.to_path_buf()),
                ..key
            })
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut k = read_key_file(path)?;
            k.source = KeySource::File(path.to_path_buf());
            Ok(k)
        }
        Err(e) => Err(err(e)),
    }
}

/// A data key of the ring.
struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&(*self.0).into())
    }
}

struct Ring {
    keys: HashMap<String, Arc<DataKey>>,
    active: Option<String>,
    loaded: Instant,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    /// The new active key.
    pub new_key: String,
    /// The keys retired (deleted) after re-encryption.
    pub retired: Vec<String>,
    /// Secrets re-encrypted.
    pub reencrypted: u64,
}

/// The state of the key ring.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VaultStatus {
    /// Fingerprint of the master key in use.
    pub master_key: String,
    /// Each key: id, state, secrets sealed with it.
    pub keys: Vec<(String, String, u64)>,
}

fn wrap_aad(key_id: &str) -> Vec<u8> {
    format!("hlbridge/vault-key/v1\0{key_id}").into_bytes()
}

fn secret_aad(r: &SecretRef, key_id: &str) -> Vec<u8> {
    format!(
        "hlbridge/secret/v1\0{}\0{}\0{}\0{key_id}",
        r.owner_table, r.owner_id, r.name
    )
    .into_bytes()
}

fn encrypt(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let mut nonce = [0u8; 24];
    fill_random(&mut nonce);
    let ct = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .ok()?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Some(out)
}

fn decrypt(cipher: &XChaCha20Poly1305, data: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if data.len() < 24 + 16 {
        return None;
    }
    let (nonce, ct) = data.split_at(24);
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    cipher
        .decrypt(&XNonce::from(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

/// The vault (see the module docs). Cheap to share behind an `Arc`.
pub struct Vault {
    store: Arc<dyn SecurityStore>,
    /// Swapped (never mutated) when the master key is rotated, here or by another process.
    master: RwLock<Arc<MasterKey>>,
    ring: RwLock<Ring>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("master_key", &self.master.read().id())
            .field("active_key", &self.ring.read().active)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens the vault on a store with a master key: loads the key ring, creating the first
    /// data key if there is none. Fails if the ring was wrapped with another master key.
    pub async fn open(
        store: Arc<dyn SecurityStore>,
        master: MasterKey,
    ) -> Result<Vault, VaultError> {
        let vault = Vault {
            store,
            master: RwLock::new(Arc::new(master)),
            ring: RwLock::new(Ring {
                keys: HashMap::new(),
                active: None,
                loaded: Instant::now(),
            }),
        };
        vault.reload().await?;
        if vault.ring.read().active.is_none() {
            let rec = vault.new_key_record()?;
            vault.store.ensure_vault_key(&rec).await?;
            vault.reload().await?;
        }
        Ok(vault)
    }

    /// The master key's fingerprint.
    pub fn master_key_id(&self) -> String {
        self.master.read().id().to_owned()
    }

    fn master(&self) -> Arc<MasterKey> {
        self.master.read().clone()
    }

    /// The master key the database's ring is wrapped with: ours, or — after another process
    /// rotated it — the one now in our key file (or its `.next` file, if that rotation has not
    /// finished moving it into place). Fails when neither matches.
    fn master_for(&self, expected: &str) -> Result<Arc<MasterKey>, VaultError> {
        let current = self.master();
        if current.id() == expected {
            return Ok(current);
        }
        let file = match current.source() {
            KeySource::File(p) | KeySource::Created(p) => Some(p.clone()),
            KeySource::Env | KeySource::Given => None,
        };
        if let Some(path) = file {
            let next = path.with_file_name(NEXT_MASTER_KEY_FILE);
            for candidate in [&path, &next] {
                if let Ok(mut k) = read_key_file(candidate)
                    && k.id() == expected
                {
                    k.source = KeySource::File(path.clone());
                    if candidate == &next {
                        // The rotation that wrote it stopped before moving it into place.
                        let _ = std::fs::rename(&next, &path);
                    }
                    let k = Arc::new(k);
                    *self.master.write() = k.clone();
                    return Ok(k);
                }
            }
        }
        Err(VaultError::MasterKeyMismatch {
            expected: expected.to_owned(),
            given: current.id().to_owned(),
        })
    }

    /// The store the vault writes to.
    pub fn store(&self) -> &Arc<dyn SecurityStore> {
        &self.store
    }

    fn new_key_record(&self) -> Result<VaultKeyRecord, VaultError> {
        let id = format!("k{}", uuid::Uuid::now_v7().simple());
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(bytes.as_mut());
        let master = self.master();
        let wrapped = encrypt(&master.cipher(), bytes.as_ref(), &wrap_aad(&id))
            .ok_or_else(|| VaultError::MasterKey("wrapping a data key failed".into()))?;
        Ok(VaultKeyRecord {
            id,
            state: "active".into(),
            master_id: master.id().to_owned(),
            wrapped: STANDARD.encode(wrapped),
            created_at: now(),
        })
    }

    /// Re-reads the key ring from the store.
    pub async fn reload(&self) -> Result<(), VaultError> {
        let records = self.store.vault_keys().await?;
        let mut keys = HashMap::new();
        let mut active = None;
        for rec in records {
            // A key already unwrapped stays usable even if the ring was re-wrapped under a new
            // master key since (the data key itself did not change).
            let existing = self.ring.read().keys.get(&rec.id).cloned();
            let key = match existing {
                Some(k) => k,
                None => {
                    let master = self.master_for(&rec.master_id)?;
                    let cipher = master.cipher();
                    let data = STANDARD
                        .decode(&rec.wrapped)
                        .map_err(|_| VaultError::Malformed(format!("vault key {}", rec.id)))?;
                    let plain = decrypt(&cipher, &data, &wrap_aad(&rec.id)).ok_or_else(|| {
                        VaultError::MasterKeyMismatch {
                            expected: rec.master_id.clone(),
                            given: master.id().to_owned(),
                        }
                    })?;
                    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
                        VaultError::Malformed(format!("vault key {} has a wrong length", rec.id))
                    })?;
                    Arc::new(DataKey(Zeroizing::new(bytes)))
                }
            };
            if rec.state == "active" {
                active = Some(rec.id.clone());
            }
            keys.insert(rec.id, key);
        }
        let mut ring = self.ring.write();
        ring.keys = keys;
        ring.active = active;
        ring.loaded = Instant::now();
        Ok(())
    }

    async fn active_key(&self) -> Result<(String, Arc<DataKey>), VaultError> {
        let stale = self.ring.read().loaded.elapsed() > RING_TTL;
        if stale {
            self.reload().await?;
        }
        let found = {
            let ring = self.ring.read();
            ring.active
                .as_ref()
                .and_then(|id| ring.keys.get(id).map(|k| (id.clone(), k.clone())))
        };
        match found {
            Some(k) => Ok(k),
            None => {
                let rec = self.new_key_record()?;
                self.store.ensure_vault_key(&rec).await?;
                self.reload().await?;
                let ring = self.ring.read();
                ring.active
                    .as_ref()
                    .and_then(|id| ring.keys.get(id).map(|k| (id.clone(), k.clone())))
                    .ok_or_else(|| VaultError::MasterKey("the key ring has no active key".into()))
            }
        }
    }

    /// Seals `plaintext` for the row `r` with the active key.
    pub async fn seal(
        &self,
        r: &SecretRef,
        plaintext: &Secret,
    ) -> Result<SealedSecret, VaultError> {
        let (key_id, key) = self.active_key().await?;
        Self::seal_with(&key_id, &key, r, plaintext.expose().as_bytes())
    }

    fn seal_with(
        key_id: &str,
        key: &DataKey,
        r: &SecretRef,
        plaintext: &[u8],
    ) -> Result<SealedSecret, VaultError> {
        let data = encrypt(&key.cipher(), plaintext, &secret_aad(r, key_id))
            .ok_or_else(|| VaultError::Malformed(r.to_string()))?;
        Ok(SealedSecret {
            key_id: key_id.to_owned(),
            ciphertext: format!("{SEAL_PREFIX}.{key_id}.{}", URL_SAFE_NO_PAD.encode(data)),
        })
    }

    /// Opens (decrypts) a sealed secret of row `r`.
    pub async fn unseal(&self, r: &SecretRef, sealed: &SealedSecret) -> Result<Secret, VaultError> {
        let mut parts = sealed.ciphertext.splitn(3, '.');
        let (Some(SEAL_PREFIX), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(VaultError::Malformed(r.to_string()));
        };
        if kid != sealed.key_id {
            return Err(VaultError::Decrypt(r.to_string()));
        }
        let mut key = self.ring.read().keys.get(kid).cloned();
        if key.is_none() {
            self.reload().await?;
            key = self.ring.read().keys.get(kid).cloned();
        }
        let key = key.ok_or_else(|| VaultError::UnknownKey {
            secret: r.to_string(),
            key: kid.to_owned(),
        })?;
        let data = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| VaultError::Malformed(r.to_string()))?;
        let plain = decrypt(&key.cipher(), &data, &secret_aad(r, kid))
            .ok_or_else(|| VaultError::Decrypt(r.to_string()))?;
        let text =
            String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Malformed(r.to_string()))?;
        Ok(Secret::new(text))
    }

    /// Seals and saves a secret (re-sealing under the new key if a rotation retired the
    /// active key meanwhile).
    pub async fn put(&self, r: &SecretRef, value: &Secret) -> Result<(), VaultError> {
        let mut tries = 0;
        loop {
            let sealed = self.seal(r, value).await?;
            match self.store.put_secret(r, &sealed).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) if tries < 3 => {
                    tries += 1;
                    self.reload().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads and opens a secret; `None` if there is none.
    pub async fn get(&self, r: &SecretRef) -> Result<Option<Secret>, VaultError> {
        match self.store.get_secret(r).await? {
            Some(sealed) => Ok(Some(self.unseal(r, &sealed).await?)),
            None => Ok(None),
        }
    }

    /// Deletes a secret.
    pub async fn delete(&self, r: &SecretRef) -> Result<(), VaultError> {
        Ok(self.store.delete_secret(r).await?)
    }

    /// Seals several secrets (for a store call that writes them in one transaction).
    pub async fn seal_all(
        &self,
        items: &[(SecretRef, &Secret)],
    ) -> Result<Vec<(SecretRef, SealedSecret)>, VaultError> {
        let (key_id, key) = self.active_key().await?;
        items
            .iter()
            .map(|(r, v)| {
                Ok((
                    r.clone(),
                    Self::seal_with(&key_id, &key, r, v.expose().as_bytes())?,
                ))
            })
            .collect()
    }

    /// The key ring: each key with its state and how many secrets use it.
    pub async fn status(&self) -> Result<VaultStatus, VaultError> {
        let counts: HashMap<String, u64> = self
            .store
            .count_secrets_by_key()
            .await?
            .into_iter()
            .collect();
        let keys = self
            .store
            .vault_keys()
            .await?
            .into_iter()
            .map(|k| {
                let n = counts.get(&k.id).copied().unwrap_or(0);
                (k.id, k.state, n)
            })
            .collect();
        Ok(VaultStatus {
            master_key: self.master_key_id(),
            keys,
        })
    }

    /// Rotates the data key (see the module docs). Safe while other processes read and
    /// write secrets.
    pub async fn rotate(&self) -> Result<RotationReport, VaultError> {
        self.reload().await?;
        self.check_ring_master().await?;
        let rec = self.new_key_record()?;
        self.store.rotate_vault_key(&rec).await?;
        self.reload().await?;
        let new_id = rec.id.clone();
        let mut reencrypted = 0;
        let mut retired = Vec::new();
        let old: Vec<String> = self
            .store
            .vault_keys()
            .await?
            .into_iter()
            .filter(|k| k.id != new_id)
            .map(|k| k.id)
            .collect();
        for old_id in old {
            let mut rounds = 0;
            loop {
                let batch = self.store.secrets_sealed_with(&old_id, 200).await?;
                for (r, sealed) in &batch {
                    let plain = self.unseal(r, sealed).await?;
                    let (kid, key) = self.active_key().await?;
                    let fresh = Self::seal_with(&kid, &key, r, plain.expose().as_bytes())?;
                    if self.store.reseal_secret(r, sealed, &fresh).await? {
                        reencrypted += 1;
                    }
                }
                if batch.is_empty() {
                    if self.store.delete_vault_key(&old_id).await? {
                        retired.push(old_id.clone());
                        break;
                    }
                    rounds += 1;
                    if rounds > 100 {
                        return Err(VaultError::Store(StoreError::Conflict(format!(
                            "vault key {old_id} is still in use after re-encryption"
                        ))));
                    }
                }
            }
        }
        self.reload().await?;
        Ok(RotationReport {
            new_key: new_id,
            retired,
            reencrypted,
        })
    }

    /// Fails unless every key of the ring is wrapped with this vault's master key (adopting a
    /// key file rotated by another process), so a new data key is never wrapped under a master
    /// key the others cannot read.
    async fn check_ring_master(&self) -> Result<(), VaultError> {
        for rec in self.store.vault_keys().await? {
            self.master_for(&rec.master_id)?;
        }
        Ok(())
    }

    /// Re-wraps every data key under `new` (see [`rotate_master_key`], which also handles the
    /// key file). From then on this vault uses `new`.
    pub async fn rewrap(&self, new: MasterKey) -> Result<MasterRotationReport, VaultError> {
        for _ in 0..10 {
            self.reload().await?;
            let records = self.store.vault_keys().await?;
            let Some(first) = records.first() else {
                break;
            };
            let old_master = first.master_id.clone();
            let mut rewrapped = Vec::with_capacity(records.len());
            for rec in &records {
                let key = self.ring.read().keys.get(&rec.id).cloned().ok_or_else(|| {
                    VaultError::UnknownKey {
                        secret: "(key ring)".into(),
                        key: rec.id.clone(),
                    }
                })?;
                let wrapped = encrypt(&new.cipher(), key.0.as_ref(), &wrap_aad(&rec.id))
                    .ok_or_else(|| VaultError::MasterKey("wrapping a data key failed".into()))?;
                rewrapped.push(VaultKeyRecord {
                    master_id: new.id().to_owned(),
                    wrapped: STANDARD.encode(wrapped),
                    ..rec.clone()
                });
            }
            if self
                .store
                .rewrap_vault_keys(&old_master, &rewrapped)
                .await?
            {
                let previous = self.master_key_id();
                *self.master.write() = Arc::new(new);
                return Ok(MasterRotationReport {
                    previous_master_key: previous,
                    master_key: self.master_key_id(),
                    rewrapped: rewrapped.len() as u64,
                });
            }
            // The ring changed under us (a data-key rotation): read it again.
        }
        Err(VaultError::Store(StoreError::Conflict(
            "the key ring kept changing during the master-key rotation; try again".into(),
        )))
    }
}

/// What a master-key rotation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MasterRotationReport {
    /// Fingerprint of the retired master key.
    pub previous_master_key: String,
    /// Fingerprint of the new master key.
    pub master_key: String,
    /// Data keys re-wrapped.
    pub rewrapped: u64,
}

/// Rotates the master key of a vault whose key came from the key file in `data_dir`, or —
/// when it came from `HLBRIDGE_MASTER_KEY` — to `new` (the caller then hands the new value to
/// the operator, who must set it before the next start). With a key file the new key is
/// written to `master.key.next` (mode 0600) before the database changes and moved over
/// `master.key` after, so no crash can leave the database wrapped with a key that is nowhere.
pub async fn rotate_master_key(
    vault: &Vault,
    data_dir: &Path,
    new: MasterKey,
) -> Result<MasterRotationReport, VaultError> {
    let from_file = matches!(
        vault.master().source(),
        KeySource::File(_) | KeySource::Created(_)
    );
    if !from_file {
        return vault.rewrap(new).await;
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    let next = data_dir.join(NEXT_MASTER_KEY_FILE);
    // A leftover from a rotation that stopped before its database change: not in use.
    if next.exists() {
        let left = read_key_file(&next)?;
        let in_use = vault
            .store()
            .vault_keys()
            .await?
            .iter()
            .any(|k| k.master_id == left.id());
        if in_use {
            vault.reload().await?;
            vault.master_for(left.id())?;
            return Err(VaultError::MasterKey(format!(
                "a previous rotation had already moved the database to master key {}; it is now in {}",
                left.id(),
                path.display()
            )));
        }
        std::fs::remove_file(&next).map_err(|source| VaultError::KeyFile {
            path: next.clone(),
            source,
        })?;
    }
    write_key_file(&next, &new)?;
    let new_source = KeySource::File(path.clone());
    let report = vault
        .rewrap(MasterKey {
            source: new_source,
            ..new
        })
        .await?;
    std::fs::rename(&next, &path).map_err(|source| VaultError::KeyFile {
        path: path.clone(),
        source,
    })?;
    Ok(report)
}

/// Writes a key to a new file with mode 0600 (fails if the file exists) and syncs it.
fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), VaultError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    (|| {
        let mut f = options.open(path)?;
        f.write_all(key.to_base64().expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })()
    .map_err(|source| VaultError::KeyFile {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hlbridge-vault-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    async fn vault(d: &Path, master: MasterKey) -> (SqliteStore, Vault) {
        let store = SqliteStore::open(d).await.expect("store");
        let v = Vault::open(Arc::new(store.clone()), master)
            .await
            .expect("vault");
        (store, v)
    }

    #[tokio::test]
    async fn seal_open_and_rows_are_bound() {
        let d = dir("bind");
        let (store, v) = vault(&d, MasterKey::generate()).await;
        let a = SecretRef::new("connections", "c1", "refresh_token");
        let b = SecretRef::new("connections", "c2", "refresh_token");
        let other_col = SecretRef::new("connections", "c1", "access_token");
        let sa = v
            .seal(&a, &Secret::new("alpha-secret"))
            .await
            .expect("seal");
        assert!(sa.ciphertext.starts_with("hlv1.k"));
        assert!(!sa.ciphertext.contains("alpha"));
        assert_eq!(
            v.unseal(&a, &sa).await.expect("open").expose(),
            "alpha-secret"
        );
        // Moved to another row or column: refused.
        assert!(matches!(
            v.unseal(&b, &sa).await,
            Err(VaultError::Decrypt(_))
        ));
        assert!(matches!(
            v.unseal(&other_col, &sa).await,
            Err(VaultError::Decrypt(_))
        ));
        // Swapped in the database: refused.
        v.put(&a, &Secret::new("alpha-secret"))
            .await
            .expect("put a");
        v.put(&b, &Secret::new("bravo-secret"))
            .await
            .expect("put b");
        let (ca, cb) = (
            store.get_secret(&a).await.expect("get").expect("a"),
            store.get_secret(&b).await.expect("get").expect("b"),
        );
        store.put_secret(&a, &cb).await.expect("swap");
        store.put_secret(&b, &ca).await.expect("swap");
        assert!(matches!(v.get(&a).await, Err(VaultError::Decrypt(_))));
        assert!(matches!(v.get(&b).await, Err(VaultError::Decrypt(_))));
        // Tampering: refused.
        let mut t = sa.clone();
        let last = t
            .ciphertext
            .pop()
            .map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
        t.ciphertext.push(last);
        assert!(v.unseal(&a, &t).await.is_err());
        // Debug shows nothing secret.
        assert!(!format!("{v:?}").contains("alpha"));
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn wrong_master_key_is_refused() {
        let d = dir("master");
        let (store, v) = vault(&d, MasterKey::generate()).await;
        v.put(&SecretRef::new("t", "1", "x"), &Secret::new("v"))
            .await
            .expect("put");
        let other = Vault::open(Arc::new(store.clone()), MasterKey::generate()).await;
        assert!(matches!(other, Err(VaultError::MasterKeyMismatch { .. })));
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let d = dir("file");
        let k1 = MasterKey::load_from(None, &d).expect("create");
        assert!(matches!(k1.source(), KeySource::Created(_)));
        let k2 = MasterKey::load_from(None, &d).expect("read");
        assert!(matches!(k2.source(), KeySource::File(_)));
        assert_eq!(k1.id(), k2.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = d.join(MASTER_KEY_FILE);
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                MasterKey::load_from(None, &d),
                Err(VaultError::KeyFilePermissions { .. })
            ));
        }
        let env = k1.to_base64();
        let k3 = MasterKey::load_from(Some(env.expose()), &d).expect("env");
        assert_eq!(k3.id(), k1.id());
        assert_eq!(k3.source(), &KeySource::Env);
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("%%%").is_err());
        assert!(!format!("{k1:?}").contains(env.expose()));
        let _ = std::fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn rotation_reencrypts_while_others_read_and_write() {
        let d = dir("rotate");
        let master = MasterKey::generate();
        let master_b64 = master.to_base64();
        let (store, v) = vault(&d, master).await;
        let refs: Vec<SecretRef> = (0..150)
            .map(|i| SecretRef::new("connections", &format!("c{i}"), "token"))
            .collect();
        for (i, r) in refs.iter().enumerate() {
            v.put(r, &Secret::new(format!("value-{i}")))
                .await
                .expect("put");
        }
        let before = v.status().await.expect("status");
        assert_eq!(before.keys.len(), 1);
        // A second process: its own store handle and vault on the same database.
        let store2 = SqliteStore::open(&d).await.expect("store2");
        let v2 = Arc::new(
            Vault::open(
                Arc::new(store2.clone()),
                MasterKey::from_base64(master_b64.expose()).expect("key"),
            )
            .await
            .expect("vault2"),
        );
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (v2, refs, stop) = (v2.clone(), refs.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                let mut writes = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                    for (i, r) in refs.iter().enumerate().step_by(7) {
                        let got = v2
                            .get(r)
                            .await
                            .expect("read during rotation")
                            .expect("present");
                        assert!(got.expose().starts_with("value-"), "{i}");
                        reads += 1;
                    }
                    // Writes keep happening too (with a possibly stale ring).
                    v2.put(&refs[0], &Secret::new("value-0"))
                        .await
                        .expect("write during rotation");
                    writes += 1;
                    tokio::task::yield_now().await;
                }
                (reads, writes)
            })
        };
        let report = v.rotate().await.expect("rotate");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (reads, writes) = reader.await.expect("reader");
        assert!(reads > 0 && writes > 0);
        assert_eq!(report.retired.len(), 1);
        assert!(report.reencrypted >= 150, "{report:?}");
        let after = v.status().await.expect("status");
        assert_eq!(after.keys.len(), 1, "{after:?}");
        assert_eq!(after.keys[0].0, report.new_key);
        assert_eq!(after.keys[0].2, 150);
        for (i, r) in refs.iter().enumerate() {
            assert_eq!(
                v2.get(r).await.expect("get").expect("some").expose(),
                format!("value-{i}")
            );
        }
        // Rotating again works, and both handles still read everything.
        let again = v2.rotate().await.expect("rotate again");
        assert_eq!(again.retired, vec![report.new_key.clone()]);
        assert_eq!(
            v.get(&refs[3]).await.expect("get").expect("some").expose(),
            "value-3"
        );
        store.close().await;
        store2.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    /// A vault whose master key comes from (or is created in) the key file of `d`.
    async fn file_vault(store: &SqliteStore, d: &Path) -> Vault {
        let key = MasterKey::load_from(None, d).expect("key file");
        Vault::open(Arc::new(store.clone()), key)
            .await
            .expect("vault")
    }

    async fn read(v: &Vault, r: &SecretRef) -> String {
        v.get(r)
            .await
            .expect("get")
            .expect("stored")
            .expose()
            .to_owned()
    }

    #[tokio::test]
    async fn master_key_rotation_rewraps_the_ring_and_replaces_the_key_file() {
        let d = dir("master");
        let store = SqliteStore::open(&d).await.expect("store");
        let v = file_vault(&store, &d).await;
        // A second process (a running `serve`) with the same key file.
        let v2 = file_vault(&store, &d).await;
        let old_text = std::fs::read_to_string(d.join(MASTER_KEY_FILE)).expect("key file");
        let old_id = v.master_key_id();
        let r = SecretRef::new("connections", "c1", "refresh_token");
        v.put(&r, &Secret::new("rotate-me")).await.expect("put");
        v.rotate().await.expect("a second data key");

        let report = rotate_master_key(&v, &d, MasterKey::generate())
            .await
            .expect("rotate master");
        assert_eq!(report.previous_master_key, old_id);
        assert_ne!(report.master_key, old_id);
        assert_eq!(report.rewrapped, 1);
        assert!(!d.join(NEXT_MASTER_KEY_FILE).exists());
        let new_text = std::fs::read_to_string(d.join(MASTER_KEY_FILE)).expect("key file");
        assert_ne!(new_text, old_text);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.join(MASTER_KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The old key no longer opens the database; the new file does.
        let old = MasterKey::from_base64(&old_text).expect("old key");
        assert!(matches!(
            Vault::open(Arc::new(store.clone()), old).await,
            Err(VaultError::MasterKeyMismatch { .. })
        ));
        let v3 = file_vault(&store, &d).await;
        assert_eq!(read(&v3, &r).await, "rotate-me");
        // The running process keeps working, and after a data-key rotation wrapped under the
        // new master key it adopts the new key file by itself.
        assert_eq!(read(&v2, &r).await, "rotate-me");
        v3.rotate().await.expect("data key under the new master");
        v2.reload().await.expect("v2 follows");
        assert_eq!(v2.master_key_id(), report.master_key);
        v2.put(&r, &Secret::new("still-works")).await.expect("put");
        assert_eq!(read(&v3, &r).await, "still-works");
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn a_rotation_interrupted_after_the_database_change_recovers_from_the_next_file() {
        let d = dir("master-crash");
        let store = SqliteStore::open(&d).await.expect("store");
        let v = file_vault(&store, &d).await;
        let r = SecretRef::new("connections", "c1", "access_token");
        v.put(&r, &Secret::new("survives")).await.expect("put");
        // Simulate the crash: the next key written and the ring re-wrapped, the file not moved.
        let new = MasterKey::generate();
        let new_id = new.id().to_owned();
        write_key_file(&d.join(NEXT_MASTER_KEY_FILE), &new).expect("next file");
        v.rewrap(new).await.expect("rewrap");
        assert!(d.join(MASTER_KEY_FILE).exists() && d.join(NEXT_MASTER_KEY_FILE).exists());
        // A fresh start loads the old master.key, finds the ring under the next key, adopts it.
        let v2 = file_vault(&store, &d).await;
        assert_eq!(v2.master_key_id(), new_id);
        assert!(!d.join(NEXT_MASTER_KEY_FILE).exists());
        assert_eq!(
            MasterKey::load_from(None, &d).expect("file").id(),
            new_id,
            "the next file was moved into place"
        );
        assert_eq!(read(&v2, &r).await, "survives");
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }

    #[tokio::test]
    async fn an_env_master_key_is_rotated_without_touching_files() {
        let d = dir("master-env");
        let store = SqliteStore::open(&d).await.expect("store");
        let env_key = MasterKey::generate();
        let env_text = env_key.to_base64();
        let v = Vault::open(
            Arc::new(store.clone()),
            MasterKey::load_from(Some(env_text.expose()), &d).expect("env"),
        )
        .await
        .expect("vault");
        let r = SecretRef::new("app_connections", "a1", "api_key");
        v.put(&r, &Secret::new("env-secret")).await.expect("put");
        let new = MasterKey::generate();
        let new_text = new.to_base64();
        rotate_master_key(&v, &d, new).await.expect("rotate");
        assert!(!d.join(MASTER_KEY_FILE).exists() && !d.join(NEXT_MASTER_KEY_FILE).exists());
        let v2 = Vault::open(
            Arc::new(store.clone()),
            MasterKey::load_from(Some(new_text.expose()), &d).expect("new env"),
        )
        .await
        .expect("new key opens");
        assert_eq!(read(&v2, &r).await, "env-secret");
        assert!(
            Vault::open(
                Arc::new(store.clone()),
                MasterKey::load_from(Some(env_text.expose()), &d).expect("old env"),
            )
            .await
            .is_err()
        );
        store.close().await;
        let _ = std::fs::remove_dir_all(d);
    }
}
