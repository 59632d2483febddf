//! S3 mirrors (`s3://bucket/prefix` with `endpoint_url`), against moto's S3 server that each
//! test starts and stops itself (tests/common/s3.rs), checking SigV4 signatures against its
//! own IAM: the v3 fixture mirrors uploaded under a prefix, credentials from the
//! `access_pair` of mirrors.yaml (read from the daemon's environment), wrong credentials
//! refused naming the bucket, and signatures still checked over S3.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mount::{check_greet_programs, errno_of, is_mounted, xattr_str, Daemon, MountDirs};
use common::s3::{spackfs_with_env, Credentials, Moto};
use common::{fixtures, path_str, FIXTURE_FPR, V3_SIGNED, V3_UNSIGNED};

const BUCKET: &str = "spack-mirror";
const PREFIX: &str = "cache";
/// How long a mount that must fail may take to exit.
const FAIL_FAST: Duration = Duration::from_secs(15);

/// The fixture's tarballs of greet and libgreet, as moto logs their GETs (path style).
const GREET_TARBALL: &str =
    "blobs/sha256/1f/1fb0cc4222d6201935117c87d172a7e4ed5bf64d46a5fb14427f43106c1c3080";
const LIBGREET_TARBALL: &str =
    "blobs/sha256/7e/7eca49826148483326e084fe8659b2d33932a24d6c2da738db625134a12b121f";

/// `mirrors.yaml` with one S3 mirror `name` at `s3://<bucket>/<prefix>` on moto, the
/// access pair read from `S3_KEY_ID` / `S3_SECRET`, and `signed` if given.
fn s3_yaml(
    dir: &Path,
    name: &str,
    moto: &Moto,
    bucket: &str,
    prefix: &str,
    signed: Option<bool>,
) -> PathBuf {
    let mut yaml = format!(
        "mirrors:\n  {name}:\n    url: s3://{bucket}/{prefix}\n    endpoint_url: {}\n    access_pair:\n      id_variable: S3_KEY_ID\n      secret_variable: S3_SECRET\n",
        moto.endpoint()
    );
    if let Some(s) = signed {
        yaml.push_str(&format!("    signed: {s}\n"));
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write mirrors.yaml");
    path
}

/// The daemon's environment holding `creds`.
fn env_of(creds: &Credentials) -> [(&str, &str); 3] {
    [
        ("S3_KEY_ID", creds.key_id.as_str()),
        ("S3_SECRET", creds.secret.as_str()),
        // Never ask an instance metadata service for credentials.
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// moto checking signatures, holding fixture cache `cache`'s mirror in `bucket`/`prefix`.
#[track_caller]
fn moto_with(fx: &common::Fixtures, cache: &str, bucket: &str, prefix: &str) -> Moto {
    let moto = Moto::with_auth();
    let t = Instant::now();
    let n = moto.bucket_with(bucket, prefix, &fx.mirror(cache));
    eprintln!(
        "moto started in {:?}, {n} files uploaded in {:?}",
        moto.startup_time(),
        t.elapsed()
    );
    assert!(n >= 8, "{n} files uploaded");
    moto
}

/// The unsigned fixture mirror in `s3://spack-mirror/cache`: `ls` lists it and a mount runs
/// greet, each tarball fetched once from the bucket.
#[test]
fn s3_mirror_with_an_access_pair_serves_greet() {
    let Some(fx) = fixtures() else { return };
    let moto = moto_with(&fx, V3_UNSIGNED.name, BUCKET, PREFIX);
    let tmp = common::short_tempdir();
    let yaml = s3_yaml(tmp.path(), "s3cache", &moto, BUCKET, PREFIX, Some(false));
    let creds = moto.credentials().clone();
    let env = env_of(&creds);

    V3_UNSIGNED.assert_listed(
        &spackfs_with_env(&["ls", "--long", path_str(&yaml)], &env),
        "unsigned",
    );

    let dirs = MountDirs::new();
    let d = Daemon::mount_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &env);
    check_greet_programs(&V3_UNSIGNED, &dirs.mnt, &d);
    let url = format!("s3://{BUCKET}/{PREFIX}");
    let greet = V3_UNSIGNED.greet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&greet, "user.spackfs.mirror"), url, "{d}");
    assert_eq!(xattr_str(&greet, "user.spackfs.signer"), "unsigned", "{d}");
    let log = moto.wait_requests(Duration::from_secs(5), |r| {
        [GREET_TARBALL, LIBGREET_TARBALL].iter().all(|t| {
            r.iter()
                .any(|x| x.path == format!("/{BUCKET}/{PREFIX}/{t}") && x.status == 200)
        })
    });
    for t in [GREET_TARBALL, LIBGREET_TARBALL] {
        assert_eq!(
            moto.served(&format!("/{BUCKET}/{PREFIX}/{t}")),
            1,
            "{t} fetched once:\n{log:#?}\n{d}"
        );
    }
    assert!(
        log.iter().all(|r| r.status != 403),
        "moto refused a request of spackfs:\n{log:#?}\n{d}"
    );
}

/// A key id moto does not know, or the right id with a wrong secret: the mount fails at
/// once, with an error naming the bucket.
#[test]
fn s3_wrong_credentials_fail_naming_the_bucket() {
    let Some(fx) = fixtures() else { return };
    let moto = moto_with(&fx, V3_UNSIGNED.name, BUCKET, PREFIX);
    let tmp = common::short_tempdir();
    let yaml = s3_yaml(tmp.path(), "s3cache", &moto, BUCKET, PREFIX, Some(false));
    let wrong_secret = Credentials {
        key_id: moto.credentials().key_id.clone(),
        secret: "not-the-secret".into(),
    };
    for creds in [Credentials::bogus(), wrong_secret] {
        let dirs = MountDirs::new();
        let env = env_of(&creds);
        let start = Instant::now();
        let d = Daemon::spawn_with(&[path_str(&yaml)], &dirs.mnt, &dirs.cache, &[], &env);
        let status = d.wait_exit(FAIL_FAST).unwrap_or_else(|| {
            panic!("the mount must fail but still runs after {FAIL_FAST:?}\n{d}")
        });
        assert!(!status.success(), "the mount must fail ({status})\n{d}");
        assert!(!is_mounted(&dirs.mnt), "{d}");
        eprintln!("refused in {:?}", start.elapsed());
        let words = [
            "403",
            "forbidden",
            "denied",
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "credentials",
        ];
        assert!(
            d.log().lines().any(|l| {
                let lower = l.to_lowercase();
                l.contains(BUCKET) && words.iter().any(|w| lower.contains(w))
            }),
            "no line names {BUCKET} with one of {words:?}\n{d}"
        );
    }
    let refused = moto.requests();
    assert!(
        refused.iter().any(|r| r.status == 403),
        "moto refused nothing: {refused:#?}"
    );
}

/// The signed fixture mirror over S3 (`signed` left at its default, true): with the
/// fixture key, greet runs and names its signer; with another key, the package is refused
/// (EACCES): signatures are checked over S3 as for any mirror.
#[test]
fn s3_signed_mirror_is_verified() {
    let Some(fx) = fixtures() else { return };
    let prefix = "signed/v3";
    let moto = moto_with(&fx, V3_SIGNED.name, "spack-signed", prefix);
    let tmp = common::short_tempdir();
    let yaml = s3_yaml(tmp.path(), "s3signed", &moto, "spack-signed", prefix, None);
    let creds = moto.credentials().clone();
    let env = env_of(&creds);
    let key = fx.fixture_key();

    let ls = spackfs_with_env(
        &["ls", "--long", path_str(&yaml), "--key", path_str(&key)],
        &env,
    );
    V3_SIGNED.assert_listed(&ls, FIXTURE_FPR);

    let dirs = MountDirs::new();
    let d = Daemon::mount_with(
        &[path_str(&yaml)],
        &dirs.mnt,
        &dirs.cache,
        &["--key", path_str(&key)],
        &env,
    );
    check_greet_programs(&V3_SIGNED, &dirs.mnt, &d);
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt);
    assert_eq!(xattr_str(&greet, "user.spackfs.signer"), FIXTURE_FPR, "{d}");
    assert_eq!(
        xattr_str(&greet, "user.spackfs.mirror"),
        format!("s3://spack-signed/{prefix}"),
        "{d}"
    );
    drop(d);

    // Another key: nothing is trusted.
    let dirs = MountDirs::new();
    let other = fx.realstack_key();
    let d = Daemon::mount_with(
        &[path_str(&yaml)],
        &dirs.mnt,
        &dirs.cache,
        &["--key", path_str(&other), "--retry-after", "300"],
        &env,
    );
    let greet = V3_SIGNED.greet_prefix(&dirs.mnt);
    let e = errno_of(
        std::fs::read(greet.join("bin/greet")),
        "read greet signed by an untrusted key",
        &d,
    );
    assert_eq!(e, libc::EACCES, "{d}");
    assert!(
        !d.log_lines_with(&["fixture-greet", "not among the trusted keys"])
            .is_empty(),
        "{d}"
    );
}
