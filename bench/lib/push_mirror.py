#!/usr/bin/env python3
"""Copies a v3 Spack build cache (a mirror directory: v3/, blobs/) into an S3 bucket or an
OCI registry, for bench/remote. Python 3 standard library, plus boto3 for `s3`.

    push_mirror.py s3 --endpoint http://127.0.0.1:PORT --bucket B [--prefix P] MIRROR
        Creates bucket B if it does not exist and uploads every file under MIRROR as the key
        P/<path relative to MIRROR> (boto3 upload_file: multipart above 8 MiB, streamed from
        disk), a few files at a time. Credentials from AWS_ACCESS_KEY_ID /
        AWS_SECRET_ACCESS_KEY (moto without auth accepts any).

    push_mirror.py oci --registry http://127.0.0.1:PORT --name NAME MIRROR
        Pushes the mirror as Spack lays out an OCI build cache (format doc section 6): for
        every v3/manifests/spec/*/*.spec.manifest.json, an image tagged NAME-VERSION-HASH.spack
        whose config is the spec JSON merged with buildcache_layout_version 3,
        binary_cache_checksum, archive_size, archive_timestamp, archive_compression (plus the
        image fields architecture, os, rootfs.diff_ids) and whose layers are the tarballs of
        the package's link/run closure in the mirror, dependencies first, the package's own
        tarball last; then the image `index.spack`: config `{}`, one layer holding the
        mirror's index database JSON (declared application/vnd.oci.image.layer.v1.tar+gzip,
        as Spack does, although it is plain JSON). Blobs the registry has (HEAD) are not sent
        again; the others go up as one POST and one streamed PUT each (distribution spec,
        monolithic upload). Plain http only; no authentication.

Both print one summary line on stdout: `files N bytes B` (s3), `images N blobs B bytes C`
(oci). Every check failure exits non-zero with a message naming the file or request.
"""

import argparse
import concurrent.futures
import datetime
import gzip
import hashlib
import http.client
import json
import os
import re
import sys
import urllib.parse
import zlib

MEDIA_TARBALL = "application/vnd.spack.install.v2.tar+gzip"
MEDIA_SPEC_PREFIX = "application/vnd.spack.spec."
MEDIA_DB_PREFIX = "application/vnd.spack.db."
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TAG = "index.spack"
CHUNK = 1 << 20
TIMEOUT = 120


def die(msg):
    sys.exit(f"push_mirror: {msg}")


# ---------------------------------------------------------------------------------------
# The v3 mirror
# ---------------------------------------------------------------------------------------

def manifest_json(path):
    """The JSON of a v3 manifest, plain or OpenPGP clearsigned."""
    with open(path, "rb") as f:
        text = f.read().decode()
    if text.startswith("-----BEGIN PGP SIGNED MESSAGE-----"):
        head, sep, rest = text.partition("\n\n")
        body = rest.split("\n-----BEGIN PGP SIGNATURE-----", 1)[0] if sep else ""
        # dash-escaped lines ("- -----...") lose their "- "
        text = "\n".join(l[2:] if l.startswith("- ") else l for l in body.split("\n"))
    try:
        m = json.loads(text)
    except ValueError as e:
        die(f"{path}: not JSON: {e}")
    if not isinstance(m, dict) or m.get("version") != 3 or not isinstance(m.get("data"), list):
        die(f"{path}: not a v3 manifest (version 3 with data[])")
    return m


def record(m, path, want):
    """The first blob record whose mediaType is `want` (or starts with it, for a prefix)."""
    for d in m["data"]:
        mt = d.get("mediaType", "")
        if mt == want or (want.endswith(".") and mt.startswith(want)):
            if d.get("checksumAlgorithm") != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", d.get("checksum", "")):
                die(f"{path}: the {mt} record has no sha256 checksum")
            return d
    die(f"{path}: no {want}* blob record")


def blob_path(mirror, hexd):
    return os.path.join(mirror, "blobs", "sha256", hexd[:2], hexd)


def scan_tarball(path, want_hex):
    """(size, sha256 hex, sha256 hex of the inflated tar), streamed; checks the sha256."""
    sha, diff = hashlib.sha256(), hashlib.sha256()
    size = 0
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            sha.update(chunk)
            data = chunk
            while data:
                diff.update(inflate.decompress(data))
                data = inflate.unused_data  # a further gzip member
                if data:
                    diff.update(inflate.flush())
                    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        diff.update(inflate.flush())
    if not inflate.eof:
        die(f"{path}: truncated gzip stream")
    if sha.hexdigest() != want_hex:
        die(f"{path}: sha256 {sha.hexdigest()}, its manifest says {want_hex}")
    return size, sha.hexdigest(), diff.hexdigest()


def read_spec(mirror, m, mpath):
    rec = record(m, mpath, MEDIA_SPEC_PREFIX)
    p = blob_path(mirror, rec["checksum"])
    with open(p, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != rec["checksum"]:
        die(f"{p}: sha256 does not match {mpath}")
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    try:
        spec = json.loads(raw)
    except ValueError as e:
        die(f"{p} (spec of {mpath}): not JSON: {e}")
    if not isinstance(spec, dict) or not isinstance(spec.get("spec"), dict) \
            or not isinstance(spec["spec"].get("nodes"), list):
        die(f"{p} (spec of {mpath}): no spec.nodes")
    return spec


def spec_manifests(mirror):
    top = os.path.join(mirror, "v3", "manifests", "spec")
    out = []
    for d in sorted(os.listdir(top)):
        sub = os.path.join(top, d)
        if not os.path.isdir(sub):
            continue
        for f in sorted(os.listdir(sub)):
            if f.endswith(".spec.manifest.json"):
                out.append(os.path.join(sub, f))
    if not out:
        die(f"no spec manifests under {top}")
    return out


# ---------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------

def push_s3(args):
    try:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
    except ImportError as e:
        die(f"boto3 is needed for s3 ({e}); scripts/setup.sh installs it in ~/.cache/spackfs-venv")
    cfg = Config(retries={"max_attempts": 3}, connect_timeout=5, read_timeout=TIMEOUT,
                 s3={"addressing_style": "path"}, max_pool_connections=16)
    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name=args.region, config=cfg)
    try:
        s3.head_bucket(Bucket=args.bucket)
    except Exception:
        s3.create_bucket(Bucket=args.bucket)
    prefix = args.prefix.strip("/")
    files = []
    for d, dirs, names in os.walk(args.mirror):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(d, n)
            rel = os.path.relpath(p, args.mirror)
            files.append((p, f"{prefix}/{rel}" if prefix else rel))
    if not files:
        die(f"no files under {args.mirror}")
    tc = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)

    def one(item):
        p, key = item
        s3.upload_file(p, args.bucket, key, Config=tc)
        return os.path.getsize(p)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        total = sum(ex.map(one, files))
    # Check: every key is there with its size.
    sizes = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            sizes[o["Key"]] = o["Size"]
    for p, key in files:
        if sizes.get(key) != os.path.getsize(p):
            die(f"s3://{args.bucket}/{key}: size {sizes.get(key)} after upload, the file has {os.path.getsize(p)}")
    print(f"files {len(files)} bytes {total}")


# ---------------------------------------------------------------------------------------
# OCI registry (distribution spec, plain http)
# ---------------------------------------------------------------------------------------

class Registry:
    def __init__(self, base, name):
        u = urllib.parse.urlsplit(base)
        if u.scheme != "http" or not u.hostname:
            die(f"--registry must be http://HOST:PORT, not {base}")
        self.host, self.port = u.hostname, u.port or 80
        self.name = name
        self.conn = None
        self.requests = 0

    def _conn(self):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT, blocksize=CHUNK)
        return self.conn

    def request(self, method, path, body=None, headers=None, ok=(200,)):
        """(status, headers, body bytes); one retry on a dropped keep-alive connection."""
        for attempt in (1, 2):
            c = self._conn()
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                c.request(method, path, body=body, headers=headers or {})
                r = c.getresponse()
                data = r.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                c.close()
                self.conn = None
                if attempt == 2:
                    raise
        self.requests += 1
        if r.status not in ok:
            die(f"{method} http://{self.host}:{self.port}{path}: {r.status} {r.reason}: {data[:500]!r}")
        return r.status, r.headers, data

    def v2(self, rest):
        return f"/v2/{self.name}/{rest}"

    def has_blob(self, hexd):
        s, _, _ = self.request("HEAD", self.v2(f"blobs/sha256:{hexd}"), ok=(200, 404))
        return s == 200

    def put_blob(self, hexd, size, body):
        """Upload one blob (bytes or a file object of `size` bytes) unless present; sent?"""
        if self.has_blob(hexd):
            return False
        _, h, _ = self.request("POST", self.v2("blobs/uploads/"), headers={"Content-Length": "0"}, ok=(202,))
        loc = h.get("Location") or die("the upload POST answered no Location")
        u = urllib.parse.urlsplit(urllib.parse.urljoin(f"http://{self.host}:{self.port}/v2/", loc))
        q = urllib.parse.parse_qsl(u.query, keep_blank_values=True) + [("digest", f"sha256:{hexd}")]
        path = f"{u.path}?{urllib.parse.urlencode(q)}"
        self.request("PUT", path, body=body, ok=(201,),
                     headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        return True

    def put_manifest(self, tag, manifest):
        body = json.dumps(manifest, separators=(",", ":")).encode()
        _, h, _ = self.request("PUT", self.v2(f"manifests/{tag}"), body=body, ok=(201,),
                               headers={"Content-Type": OCI_MANIFEST, "Content-Length": str(len(body))})
        want = "sha256:" + hashlib.sha256(body).hexdigest()
        got = h.get("Docker-Content-Digest")
        if got and got != want:
            die(f"manifest {tag}: the registry says digest {got}, we sent {want}")


def oci_tag(name, version, h):
    tag = re.sub(r"[^\w.-]", "_", f"{name}-{version}-{h}.spack")
    return tag if len(tag) <= 128 else tag[:64] + tag[-64:]


def dep_types(d):
    p = d.get("parameters") or {}
    t = p.get("deptypes", d.get("type", []))
    return [t] if isinstance(t, str) else list(t)


def closure(nodes, root_hash):
    """Hashes of the link/run closure of root, dependencies first, root last (post-order)."""
    by_hash = {n.get("hash"): n for n in nodes}
    out, seen = [], set()

    def visit(h):
        if h in seen or h not in by_hash:
            return
        seen.add(h)
        for d in by_hash[h].get("dependencies", []) or []:
            if {"link", "run"} & set(dep_types(d)):
                visit(d.get("hash"))
        out.append(h)

    visit(root_hash)
    return out


def push_oci(args):
    mirror = args.mirror
    reg = Registry(args.registry, args.name)
    reg.request("GET", "/v2/", ok=(200,))
    pkgs = []  # (manifest path, root hash, spec JSON, tarball hex)
    tar_of = {}  # dag hash -> tarball hex
    for mp in spec_manifests(mirror):
        m = manifest_json(mp)
        mh = re.search(r"-([a-z2-7]{32})\.spec\.manifest\.json$", os.path.basename(mp))
        if not mh:
            die(f"{mp}: no DAG hash in the file name")
        tb = record(m, mp, MEDIA_TARBALL)["checksum"]
        spec = read_spec(mirror, m, mp)
        pkgs.append((mp, mh.group(1), spec, tb))
        tar_of[mh.group(1)] = tb
    layer = {}  # tarball hex -> (size, diff_id hex)
    blobs_sent = bytes_sent = 0
    for mp, h, spec, tb in pkgs:
        nodes = spec["spec"]["nodes"]
        root = next((n for n in nodes if n.get("hash") == h), None)
        if root is None:
            die(f"{mp}: its spec has no node with hash {h}")
        chain = [x for x in closure(nodes, h)
                 if x in tar_of and not next(n for n in nodes if n.get("hash") == x).get("external")]
        for x in chain:
            hexd = tar_of[x]
            if hexd in layer:
                continue
            p = blob_path(mirror, hexd)
            size, _, diff = scan_tarball(p, hexd)
            with open(p, "rb") as f:
                if reg.put_blob(hexd, size, f):
                    blobs_sent += 1
                    bytes_sent += size
            layer[hexd] = (size, diff)
        size, _ = layer[tb]
        ts = datetime.datetime.fromtimestamp(os.stat(blob_path(mirror, tb)).st_mtime, datetime.timezone.utc)
        config = {"architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer[tar_of[x]][1]}" for x in chain]}}
        config.update(spec)
        config.update({
            "buildcache_layout_version": 3,
            "binary_cache_checksum": {"hash_algorithm": "sha256", "hash": tb},
            "archive_size": size,
            "archive_timestamp": ts.isoformat(),
            "archive_compression": "gzip",
        })
        cbody = json.dumps(config, separators=(",", ":")).encode()
        chex = hashlib.sha256(cbody).hexdigest()
        if reg.put_blob(chex, len(cbody), cbody):
            blobs_sent += 1
            bytes_sent += len(cbody)
        arch = root.get("arch") or {}
        desc = " ".join([f"{root.get('name')}@={root.get('version')}"]
                        + [f"{k}={arch[a]}" for k, a in (("platform", "platform"), ("os", "platform_os"), ("target", "target"))
                           if isinstance(arch.get(a), str)])
        manifest = {
            "mediaType": OCI_MANIFEST,
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{chex}", "size": len(cbody)},
            "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{tar_of[x]}", "size": layer[tar_of[x]][0]}
                       for x in chain],
            "annotations": {"org.opencontainers.image.description": desc},
        }
        reg.put_manifest(oci_tag(root.get("name"), root.get("version"), h), manifest)

    # The index image.
    ip = os.path.join(mirror, "v3", "manifests", "index", "index.manifest.json")
    im = manifest_json(ip)
    ihex = record(im, ip, MEDIA_DB_PREFIX)["checksum"]
    with open(blob_path(mirror, ihex), "rb") as f:
        db = f.read()
    if db[:2] == b"\x1f\x8b":  # the index image holds the plain JSON
        db = gzip.decompress(db)
        ihex = hashlib.sha256(db).hexdigest()
    elif hashlib.sha256(db).hexdigest() != ihex:
        die(f"{blob_path(mirror, ihex)}: sha256 does not match {ip}")
    json.loads(db)
    for hexd, body in ((ihex, db), (hashlib.sha256(b"{}").hexdigest(), b"{}")):
        if reg.put_blob(hexd, len(body), body):
            blobs_sent += 1
            bytes_sent += len(body)
    reg.put_manifest(INDEX_TAG, {
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
        "layers": [{"mediaType": OCI_LAYER, "digest": f"sha256:{ihex}", "size": len(db)}],
    })
    # Check: the tags are listed.
    _, _, body = reg.request("GET", reg.v2("tags/list?n=10000"))
    tags = set(json.loads(body).get("tags") or [])
    want = {oci_tag(next(n for n in s["spec"]["nodes"] if n.get("hash") == h).get("name"),
                    next(n for n in s["spec"]["nodes"] if n.get("hash") == h).get("version"), h)
            for _, h, s, _ in pkgs} | {INDEX_TAG}
    if not want <= tags:
        die(f"tags missing after the push: {sorted(want - tags)}")
    print(f"images {len(pkgs) + 1} blobs {blobs_sent} bytes {bytes_sent} requests {reg.requests}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("s3", help="upload the mirror tree into an S3 bucket")
    s.add_argument("--endpoint", required=True)
    s.add_argument("--bucket", required=True)
    s.add_argument("--prefix", default="")
    s.add_argument("--region", default="us-east-1")
    s.add_argument("mirror")
    o = sub.add_parser("oci", help="push the mirror to an OCI registry in Spack's layout")
    o.add_argument("--registry", required=True)
    o.add_argument("--name", required=True)
    o.add_argument("mirror")
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.mirror, "v3", "manifests", "index", "index.manifest.json")):
        die(f"{args.mirror} is not a v3 mirror with an index (v3/manifests/index/index.manifest.json)")
    push_s3(args) if args.cmd == "s3" else push_oci(args)


if __name__ == "__main__":
    main()
