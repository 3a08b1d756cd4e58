//! Security commands as an operator runs them: master-key rotation with a key file and with
//! `HLBRIDGE_MASTER_KEY`, and the audit trail they leave.

use std::path::Path;
use std::process::{Command, Output};

fn hlbridge(args: &[&str], master_key: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hlbridge"));
    cmd.args(args)
        .env_remove("HLBRIDGE_DATA")
        .env_remove("HLBRIDGE_DATABASE_URL")
        .env_remove("HLBRIDGE_MASTER_KEY");
    if let Some(k) = master_key {
        cmd.env("HLBRIDGE_MASTER_KEY", k);
    }
    cmd.output().expect("run hlbridge")
}

fn ok(o: Output) -> String {
    let text = format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn master_key_of(dir: &Path, env: Option<&str>) -> String {
    let out = ok(hlbridge(
        &[
            "vault",
            "status",
            "--json",
            "--data",
            &dir.display().to_string(),
        ],
        env,
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    v["master_key"].as_str().expect("master_key").to_owned()
}

#[test]
fn rotate_master_with_a_key_file() {
    let dir = std::env::temp_dir().join(format!("hlbridge-cli-master-{}", uuid::Uuid::new_v4()));
    let d = dir.display().to_string();
    ok(hlbridge(
        &[
            "connect",
            "app",
            "shop",
            "--bearer",
            "bearer-value-1234",
            "--data",
            &d,
        ],
        None,
    ));
    let before = master_key_of(&dir, None);
    let key_before = std::fs::read_to_string(dir.join("master.key")).expect("key file");
    let out = ok(hlbridge(&["vault", "rotate-master", "--data", &d], None));
    assert!(out.contains("Rotated the master key"), "{out}");
    assert!(
        !out.contains(key_before.trim()),
        "the old key is never printed"
    );
    let after = master_key_of(&dir, None);
    assert_ne!(before, after);
    assert_ne!(
        std::fs::read_to_string(dir.join("master.key")).expect("key file"),
        key_before
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("master.key")), 0o600);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("hlbridge.db")), 0o600);
    }
    // The old key no longer opens the database.
    let old = hlbridge(&["vault", "status", "--data", &d], Some(key_before.trim()));
    assert!(!old.status.success());
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&old.stderr)
    );
    // The stored secret still decrypts under the new key (a data-key rotation re-encrypts it).
    let rot = ok(hlbridge(&["vault", "rotate", "--data", &d], None));
    assert!(rot.contains("1 secret(s) re-encrypted"), "{rot}");
    let audit = ok(hlbridge(&["audit", "--json", "--data", &d], None));
    assert!(audit.contains("secret.rotated"), "{audit}");
    assert!(
        audit.contains(&after),
        "the audit names the new master key id: {audit}"
    );
    assert!(!audit.contains("bearer-value-1234"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn rotate_master_given_in_the_environment() {
    let dir =
        std::env::temp_dir().join(format!("hlbridge-cli-master-env-{}", uuid::Uuid::new_v4()));
    let d = dir.display().to_string();
    let k1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    ok(hlbridge(
        &[
            "connect",
            "app",
            "shop",
            "--api-key-header",
            "X-Key",
            "--api-key",
            "key-value-5678",
            "--data",
            &d,
        ],
        Some(k1),
    ));
    assert!(!dir.join("master.key").exists());
    let out = ok(hlbridge(
        &["vault", "rotate-master", "--data", &d],
        Some(k1),
    ));
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("HLBRIDGE_MASTER_KEY="))
        .unwrap_or_else(|| panic!("the new key is printed once: {out}"));
    let k2 = line.trim().to_owned();
    assert_ne!(k2, k1);
    assert!(!dir.join("master.key").exists(), "no key file is written");
    assert!(
        !hlbridge(&["vault", "status", "--data", &d], Some(k1))
            .status
            .success()
    );
    let rot = ok(hlbridge(&["vault", "rotate", "--data", &d], Some(&k2)));
    assert!(rot.contains("1 secret(s) re-encrypted"), "{rot}");
    // Showing the generated key is itself audited.
    let audit = ok(hlbridge(&["audit", "--json", "--data", &d], Some(&k2)));
    assert!(audit.contains("secret.viewed"), "{audit}");
    assert!(
        !audit.contains(&k2),
        "the key itself is not in the audit log"
    );
    let _ = std::fs::remove_dir_all(dir);
}
