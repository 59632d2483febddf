//! Generated v3 mirrors (with the crate's `spackfs::writer`) holding packages whose
//! tarballs the tests build member by member, plus a well-behaved companion package that
//! must still install when another package of the same run is refused.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;
use spackfs::buildcache::manifest::BlobRecord;
use spackfs::writer::{padded_root, MirrorWriter, NodeDef, SigningKey};

use super::tarball::{gzip, TarBuilder};
use super::{entries, install, path_str, run_program, Run};

/// The store root generated packages were "built" in (padded to 128 characters).
pub const BUILD_STORE: &str = "/opt/fixture-store";

pub fn build_root() -> String {
    padded_root(BUILD_STORE, 128)
}

/// Relocation lists of a generated package.
#[derive(Default, Clone)]
pub struct Lists {
    pub binaries: Vec<String>,
    pub texts: Vec<String>,
    pub links: Vec<String>,
}

impl Lists {
    pub fn texts(paths: &[&str]) -> Self {
        Lists {
            texts: paths.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn binaries(paths: &[&str]) -> Self {
        Lists {
            binaries: paths.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

/// A generated package: its spec node and build-time prefix.
#[derive(Clone)]
pub struct GenPkg {
    pub name: String,
    pub node: Value,
    pub hash: String,
    /// Build-time store root (`buildpath`).
    pub buildpath: String,
    /// Build-time prefix (absolute).
    pub prefix: String,
}

impl GenPkg {
    /// `name@1.0`, built under the padded [`BUILD_STORE`].
    pub fn new(name: &str) -> Self {
        Self::with_buildpath(name, &build_root())
    }

    pub fn with_buildpath(name: &str, buildpath: &str) -> Self {
        let node = NodeDef::new(name, "1.0").to_json();
        let hash = node["hash"].as_str().expect("hash").to_string();
        GenPkg {
            name: name.to_string(),
            prefix: format!("{buildpath}/linux-x86_64/{name}-1.0-{hash}"),
            buildpath: buildpath.to_string(),
            node,
            hash,
        }
    }

    /// What the error messages call the package: `name@1.0`.
    pub fn spec(&self) -> String {
        format!("{}@1.0", self.name)
    }

    /// The prefix's tar member name (no leading `/`).
    pub fn member_prefix(&self) -> &str {
        self.prefix.trim_start_matches('/')
    }

    /// Tar member name of `rel` inside the prefix.
    pub fn member(&self, rel: &str) -> String {
        format!("{}/{rel}", self.member_prefix())
    }

    /// Where the package lands under `root` (default projection).
    pub fn installed_prefix(&self, root: &Path) -> PathBuf {
        root.join(format!("linux-x86_64/{}-1.0-{}", self.name, self.hash))
    }

    /// The build-time sbang path: unpadded store root + `/bin/sbang`.
    pub fn sbang_path(&self) -> String {
        let store = self
            .buildpath
            .split("/__spack_path_placeholder__")
            .next()
            .unwrap_or(&self.buildpath);
        format!("{store}/bin/sbang")
    }

    /// A Spack 1.2 style (flow YAML) `binary_distribution`.
    pub fn buildinfo(&self, lists: &Lists) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("'{}'", s.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{{sbang_install_path: {}, buildpath: {}, spackprefix: /opt/spack, relative_prefix: linux-x86_64/{}-1.0-{}, hardlinks_deduped: true, hash_to_prefix: {{{}: {}}}, relocate_binaries: [{}], relocate_links: [{}], relocate_textfiles: [{}]}}\n",
            self.sbang_path(),
            self.buildpath,
            self.name,
            self.hash,
            self.hash,
            self.prefix,
            list(&lists.binaries),
            list(&lists.links),
            list(&lists.texts),
        )
    }

    /// An uncompressed tarball laid out as Spack does: the prefix's parent directories, the
    /// prefix, `.spack/`, the members `body` adds, and `buildinfo` (when given) as the last
    /// member `.spack/binary_distribution`.
    pub fn tar(&self, body: impl FnOnce(&mut TarBuilder), buildinfo: Option<&str>) -> Vec<u8> {
        let mut t = TarBuilder::new();
        let mut parent = String::new();
        for comp in self.member_prefix().split('/') {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            t.dir(&parent);
        }
        t.dir(&self.member(".spack"));
        body(&mut t);
        if let Some(info) = buildinfo {
            t.file(
                &self.member(".spack/binary_distribution"),
                0o644,
                info.as_bytes(),
            );
        }
        t.finish()
    }

    /// The gzip-compressed tarball with a buildinfo made from `lists`.
    pub fn tgz(&self, body: impl FnOnce(&mut TarBuilder), lists: &Lists) -> Vec<u8> {
        gzip(&self.tar(body, Some(&self.buildinfo(lists))))
    }
}

/// The well-behaved companion package: `bin/hello.sh` prints its own (relocated) prefix.
pub fn good_pkg() -> (GenPkg, Vec<u8>) {
    let good = GenPkg::new("good");
    let script = format!("#!/bin/sh\necho \"good from {}\"\n", good.prefix);
    let tgz = good.tgz(
        |t| {
            t.dir(&good.member("bin"));
            t.file(&good.member("bin/hello.sh"), 0o755, script.as_bytes());
        },
        &Lists::texts(&["bin/hello.sh"]),
    );
    (good, tgz)
}

/// The companion package is installed under `root` and runs with its new prefix.
#[track_caller]
pub fn assert_good_works(root: &Path) {
    let (good, _) = good_pkg();
    let prefix = good.installed_prefix(root);
    let run = run_program(prefix.join("bin/hello.sh"), [] as [&str; 0]);
    run.assert_ok();
    assert_eq!(
        run.stdout,
        format!("good from {}\n", prefix.display()),
        "{run}"
    );
}

/// A generated mirror in a temporary directory (`mirror/`, the install `root/`, key files).
pub struct TestMirror {
    pub tmp: tempfile::TempDir,
    writer: MirrorWriter,
    key_files: Vec<PathBuf>,
    signed: bool,
}

impl TestMirror {
    /// A mirror signed with a freshly generated key, which the installs trust.
    pub fn signed() -> Self {
        let key = SigningKey::generate("Test Key <test@example.invalid>", None, None)
            .expect("key generation");
        let mut m = Self::create(Some(key.clone()));
        m.trust(&key);
        m
    }

    pub fn unsigned() -> Self {
        Self::create(None)
    }

    fn create(key: Option<SigningKey>) -> Self {
        let tmp = super::short_tempdir();
        let signed = key.is_some();
        let writer = MirrorWriter::new(&tmp.path().join("mirror"), key).expect("mirror writer");
        TestMirror {
            tmp,
            writer,
            key_files: Vec::new(),
            signed,
        }
    }

    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp().join("mirror")
    }

    /// The default install root.
    pub fn root(&self) -> PathBuf {
        self.tmp().join("root")
    }

    /// Also trust `key` when installing.
    pub fn trust(&mut self, key: &SigningKey) -> PathBuf {
        let path = self.tmp().join(format!("{}.pub.asc", key.fingerprint()));
        std::fs::write(&path, key.public_armored().expect("armored key")).expect("key file");
        self.key_files.push(path.clone());
        path
    }

    /// Add a package (single-node DAG); returns its tarball record.
    pub fn add(&mut self, pkg: &GenPkg, tgz: &[u8]) -> BlobRecord {
        self.writer
            .add_raw(std::slice::from_ref(&pkg.node), tgz)
            .expect("add package")
    }

    /// Add the companion package.
    pub fn add_good(&mut self) {
        let (good, tgz) = good_pkg();
        self.add(&good, &tgz);
    }

    /// Write the index and keys.
    pub fn finish(&self) {
        self.writer.finish().expect("finish mirror");
    }

    pub fn blob(&self, rec: &BlobRecord) -> PathBuf {
        self.dir().join(rec.path())
    }

    /// The spec manifest of `pkg`.
    pub fn manifest(&self, pkg: &GenPkg) -> PathBuf {
        self.dir().join(format!(
            "v3/manifests/spec/{0}/{0}-1.0-{1}.spec.manifest.json",
            pkg.name, pkg.hash
        ))
    }

    /// Replace `pkg`'s manifest by the same JSON clearsigned with `key` at time `at`.
    pub fn resign(&self, pkg: &GenPkg, key: &SigningKey, at: Option<SystemTime>) {
        let path = self.manifest(pkg);
        let text = clearsigned_text(&std::fs::read(&path).expect("manifest"));
        let signed = key.clearsign(&text, at).expect("clearsign");
        std::fs::write(&path, signed).expect("write manifest");
    }

    /// `--key FILE...` or `--unsigned`.
    pub fn trust_args(&self) -> Vec<String> {
        if !self.signed {
            return vec!["--unsigned".into()];
        }
        self.key_files
            .iter()
            .flat_map(|k| ["--key".to_string(), path_str(k).to_string()])
            .collect()
    }

    /// Install `specs` into `root` with this mirror's trust and `extra` options.
    pub fn install_into(&self, root: &Path, extra: &[&str], specs: &[&str]) -> Run {
        let trust = self.trust_args();
        let mut args: Vec<&str> = trust.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        install(&self.dir(), root, &args, specs)
    }
}

/// Fingerprints of a key's certificate and of all its subkeys.
pub fn key_fingerprints(key: &SigningKey) -> Vec<String> {
    use sequoia_openpgp::parse::Parse;
    let cert = sequoia_openpgp::Cert::from_bytes(&key.public_armored().expect("armored key"))
        .expect("certificate");
    cert.keys()
        .map(|k| k.key().fingerprint().to_hex())
        .collect()
}

/// The text of a clearsigned document (dash-escaping undone), or the bytes as they are.
pub fn clearsigned_text(doc: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(doc.to_vec()).expect("manifest is UTF-8");
    if !text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----") {
        return doc.to_vec();
    }
    let body = text.split_once("\n\n").expect("armor headers").1;
    let body = body
        .split("\n-----BEGIN PGP SIGNATURE-----")
        .next()
        .expect("signature");
    body.lines()
        .map(|l| l.strip_prefix("- ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

/// A mirror holding a package `evil` and the companion `good`, installed together.
pub struct Scenario {
    pub mirror: TestMirror,
    pub evil: GenPkg,
    pub evil_rec: BlobRecord,
}

impl Scenario {
    /// A signed mirror with `evil` (this tarball) and `good`.
    pub fn new(evil: GenPkg, evil_tgz: &[u8]) -> Self {
        Self::in_mirror(TestMirror::signed(), evil, evil_tgz)
    }

    pub fn in_mirror(mut mirror: TestMirror, evil: GenPkg, evil_tgz: &[u8]) -> Self {
        let evil_rec = mirror.add(&evil, evil_tgz);
        mirror.add_good();
        mirror.finish();
        Scenario {
            mirror,
            evil,
            evil_rec,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.mirror.root()
    }

    /// Install `evil` and `good` in one command into the default root.
    pub fn install(&self, extra: &[&str]) -> Run {
        self.install_into(&self.root(), extra)
    }

    pub fn install_into(&self, root: &Path, extra: &[&str]) -> Run {
        self.mirror
            .install_into(root, extra, &[&self.evil.name, "good"])
    }

    /// The run failed because of `evil` (the error names it, the mirror and every one of
    /// `causes`), nothing of `evil` was published or left in staging, and `good` works.
    #[track_caller]
    pub fn assert_refused(&self, run: &Run, causes: &[&str]) {
        self.assert_refused_in(&self.root(), run, causes);
    }

    #[track_caller]
    pub fn assert_refused_in(&self, root: &Path, run: &Run, causes: &[&str]) {
        if std::env::var_os("SPACKFS_TEST_VERBOSE").is_some() {
            eprintln!("{run}");
        }
        run.assert_failed();
        let mirror = self.mirror.dir();
        let spec = self.evil.spec();
        let mut needles = vec![spec.as_str(), path_str(&mirror)];
        needles.extend_from_slice(causes);
        run.assert_stderr_line_has(&needles);
        assert!(
            run.stdout.contains("installed 1 package(s)") && run.stdout.contains("1 failed"),
            "summary should count good as installed and evil as failed:\n{run}"
        );
        assert!(
            !self.evil.installed_prefix(root).exists(),
            "{} was published although refused:\n{run}",
            self.evil.installed_prefix(root).display()
        );
        let published: Vec<String> = entries(&root.join("linux-x86_64"))
            .into_iter()
            .filter(|e| !e.starts_with("good-1.0-"))
            .collect();
        assert!(
            published.is_empty(),
            "unexpected prefixes {published:?}:\n{run}"
        );
        let staging = entries(&root.join(".spackfs-staging"));
        assert!(
            staging.is_empty(),
            "staging left behind: {staging:?}:\n{run}"
        );
        assert_good_works(root);
    }
}

/// Write `blob` as the index blob of the v3 mirror at `mirror` and point its (unsigned)
/// index manifest at it.
pub fn write_index(mirror: &Path, blob: &[u8]) {
    use sha2::{Digest, Sha256};
    let sum: String = Sha256::digest(blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = mirror.join(format!("blobs/sha256/{}/{sum}", &sum[..2]));
    std::fs::create_dir_all(path.parent().unwrap()).expect("blob dir");
    std::fs::write(&path, blob).expect("blob");
    let manifest = serde_json::json!({"version": 3, "data": [{"contentLength": blob.len(),
        "mediaType": "application/vnd.spack.db.v8+json", "compression": "none",
        "checksumAlgorithm": "sha256", "checksum": sum}]});
    std::fs::write(
        mirror.join("v3/manifests/index/index.manifest.json"),
        manifest.to_string(),
    )
    .expect("manifest");
}

/// Change the `installs` of the index of the v3 mirror at `mirror` with `f`.
pub fn rewrite_index(mirror: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let m: Value = serde_json::from_slice(
        &std::fs::read(mirror.join("v3/manifests/index/index.manifest.json")).expect("manifest"),
    )
    .expect("manifest JSON");
    let sum = m["data"][0]["checksum"].as_str().expect("checksum");
    let blob = mirror.join(format!("blobs/sha256/{}/{sum}", &sum[..2]));
    let mut db: Value =
        serde_json::from_slice(&std::fs::read(blob).expect("index")).expect("index JSON");
    f(db["database"]["installs"]
        .as_object_mut()
        .expect("installs"));
    write_index(mirror, db.to_string().as_bytes());
}
