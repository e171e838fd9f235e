//! `nodelet images import FILE.tar`: loads an OCI image layout archive into
//! containerd's CRI namespace and unpacks it for the CRI snapshotter, so pods
//! can use the image on a node that reaches no registry.
//!
//! The steps are containerd's own import, over its gRPC API: write every blob
//! to the content store (with the garbage-collection reference labels that
//! tie index → manifest → config/layers), create or update the image record,
//! then apply each layer into a committed snapshot named by its chain ID. All
//! of it happens under a lease, so nothing is collected half-way.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, DeleteRequest, Image, InfoRequest, UpdateImageRequest, UpdateRequest,
    WriteAction, WriteContentRequest, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
};
use containerd_client::types::Descriptor;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::clock::UnixNanos;

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: {reason}")]
    Archive { file: String, reason: String },
    #[error("{file}: containerd {call}: {message}")]
    Containerd { file: String, call: &'static str, message: String },
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// containerd's own socket (not a CRI endpoint URL).
    pub socket: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub os: String,
    pub arch: String,
}

impl ImportOptions {
    pub fn for_socket(socket: PathBuf) -> Self {
        Self {
            socket,
            namespace: super::CRI_NAMESPACE.into(),
            snapshotter: "overlayfs".into(),
            os: "linux".into(),
            arch: go_arch().into(),
        }
    }
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub name: String,
    pub digest: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<OciPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
struct OciPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Debug, Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<OciDescriptor>,
}

#[derive(Debug, Deserialize)]
struct OciManifest {
    config: OciDescriptor,
    #[serde(default)]
    layers: Vec<OciDescriptor>,
}

#[derive(Debug, Deserialize)]
struct OciConfig {
    rootfs: OciRootfs,
}

#[derive(Debug, Deserialize)]
struct OciRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// Where each member of the (uncompressed) tar lies.
struct Archive {
    path: PathBuf,
    display: String,
    members: HashMap<String, (u64, u64)>,
    /// A decompressed copy we made and must delete.
    temp: Option<PathBuf>,
}

impl Drop for Archive {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = std::fs::remove_file(t);
        }
    }
}

impl Archive {
    fn err(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Archive { file: self.display.clone(), reason: reason.into() }
    }

    fn open(file: &Path) -> Result<Self, ImportError> {
        let display = file.display().to_string();
        let aerr = |reason: String| ImportError::Archive { file: display.clone(), reason };
        let mut f = std::fs::File::open(file).map_err(|e| aerr(e.to_string()))?;
        let mut magic = [0u8; 2];
        let n = f.read(&mut magic).map_err(|e| aerr(e.to_string()))?;
        let (path, temp) = if n == 2 && magic == [0x1f, 0x8b] {
            let tmp = std::env::temp_dir().join(format!("nodelet-import-{}.tar", std::process::id()));
            let src = std::fs::File::open(file).map_err(|e| aerr(e.to_string()))?;
            let mut out = std::fs::File::create(&tmp).map_err(|e| aerr(format!("{}: {e}", tmp.display())))?;
            std::io::copy(&mut flate2::read::GzDecoder::new(src), &mut out)
                .map_err(|e| aerr(format!("gunzip: {e}")))?;
            (tmp.clone(), Some(tmp))
        } else {
            (file.to_path_buf(), None)
        };
        let mut archive = Archive { path: path.clone(), display: display.clone(), members: HashMap::new(), temp };
        let f = std::fs::File::open(&path).map_err(|e| aerr(e.to_string()))?;
        let mut tar = tar::Archive::new(f);
        for entry in tar.entries_with_seek().map_err(|e| aerr(format!("not a tar archive: {e}")))? {
            let entry = entry.map_err(|e| aerr(format!("not a tar archive: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(|e| aerr(e.to_string()))?.to_string_lossy().trim_start_matches("./").to_string();
            archive.members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(archive)
    }

    fn read_member(&self, name: &str) -> Result<Vec<u8>, ImportError> {
        let (pos, size) = *self.members.get(name).ok_or_else(|| self.err(format!("{name} is missing")))?;
        if size > 64 << 20 {
            return Err(self.err(format!("{name} is {size} bytes, too large for a JSON document")));
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| self.err(e.to_string()))?;
        // A header may claim more than the archive holds: allocate only
        // what is really there (found by fuzzing: a 6 KB file asked for 8 MB).
        let len = f.metadata().map_err(|e| self.err(e.to_string()))?.len();
        if pos.checked_add(size).is_none_or(|end| end > len) {
            return Err(self.err(format!("{name}: its header claims {size} bytes past the end of the archive")));
        }
        f.seek(SeekFrom::Start(pos)).map_err(|e| self.err(e.to_string()))?;
        let mut buf = vec![0u8; usize::try_from(size).map_err(|e| self.err(e.to_string()))?];
        f.read_exact(&mut buf).map_err(|e| self.err(format!("{name}: {e}")))?;
        Ok(buf)
    }

    fn blob_member(digest: &str) -> String {
        format!("blobs/{}", digest.replacen(':', "/", 1))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, ImportError> {
        let bytes = self.read_member(name)?;
        serde_json::from_slice(&bytes).map_err(|e| self.err(format!("{name}: {e}")))
    }
}

/// Reads an image archive's layout without a containerd: each image's
/// name and, for a manifest, the chain IDs of its layers. What `import`
/// decodes before it uploads anything (a fuzz target, and a check).
pub fn read_layout(file: &Path) -> Result<Vec<(String, Vec<String>)>, ImportError> {
    let archive = Archive::open(file)?;
    let index: OciIndex = archive.read_json("index.json")?;
    let mut out = Vec::new();
    for entry in &index.manifests {
        let name = entry.annotations.get("io.containerd.image.name").map(|n| normalize_reference(n)).unwrap_or_default();
        let mut chains = Vec::new();
        if let Ok(m) = archive.read_json::<OciManifest>(&Archive::blob_member(&entry.digest))
            && let Ok(c) = archive.read_json::<OciConfig>(&Archive::blob_member(&m.config.digest))
        {
            chains = chain_ids(&c.rootfs.diff_ids);
        }
        out.push((name, chains));
    }
    Ok(out)
}

/// Normalises an image name the way containerd's CRI plugin does, so that a
/// pod naming `busybox:1` finds the imported `docker.io/library/busybox:1`.
pub fn normalize_reference(name: &str) -> String {
    if let Ok(r) = crate::reference::parse(name) {
        return r.normalized();
    }
    // Names the strict parser refuses (a short test digest, ...) are
    // completed by the same rules, leniently.
    let (repo_part, _) = name.split_once('@').unwrap_or((name, ""));
    let first = repo_part.split('/').next().unwrap_or("");
    let has_domain = repo_part.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        name.to_string()
    } else if repo_part.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if !full.contains('@') && !last.contains(':') {
        full.push_str(":latest");
    }
    full
}

/// The chain ID of a layer stack, as the OCI image spec defines it.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

struct Session {
    channel: Channel,
    namespace: String,
    lease: String,
    file: String,
}

impl Session {
    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Ok(v) = self.lease.parse() {
            md.insert("containerd-lease", v);
        }
        r
    }

    fn err(&self, call: &'static str, s: tonic::Status) -> ImportError {
        ImportError::Containerd { file: self.file.clone(), call, message: s.message().to_string() }
    }
}

/// Imports every image named in the archive's index.json.
pub async fn import(file: &Path, opts: &ImportOptions) -> Result<Vec<ImportedImage>, ImportError> {
    let path = file.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || Archive::open(&path))
        .await
        .map_err(|e| ImportError::Archive { file: file.display().to_string(), reason: e.to_string() })??;
    if !archive.members.contains_key("index.json") {
        return Err(archive.err(
            "no index.json: not an OCI image layout archive (docker save from Docker 25+, `ctr images export` and \
             tests/images/build.sh write one)",
        ));
    }
    let index: OciIndex = archive.read_json("index.json")?;
    if index.manifests.is_empty() {
        return Err(archive.err("index.json lists no images"));
    }

    let channel = containerd_client::connect(&opts.socket).await.map_err(|e| ImportError::Containerd {
        file: archive.display.clone(),
        call: "connect",
        message: format!("{}: {e}", opts.socket.display()),
    })?;
    let lease_id = format!("nodelet-import-{}-{}", std::process::id(), UnixNanos::now().0);
    let mut session =
        Session { channel: channel.clone(), namespace: opts.namespace.clone(), lease: String::new(), file: archive.display.clone() };
    let expire = jiff_like_rfc3339(UnixNanos::now().secs() + 3600);
    LeasesClient::new(channel.clone())
        .create(session.req(containerd_client::services::v1::CreateRequest {
            id: lease_id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".to_string(), expire)]),
        }))
        .await
        .map_err(|s| session.err("Leases.Create", s))?;
    session.lease = lease_id.clone();

    let result = import_all(&archive, &index, &session, opts).await;

    let mut del = tonic::Request::new(DeleteRequest { id: lease_id, sync: false });
    if let Ok(v) = opts.namespace.parse() {
        del.metadata_mut().insert("containerd-namespace", v);
    }
    if let Err(s) = LeasesClient::new(channel).delete(del).await {
        tracing::warn!(error = %s.message(), "could not delete the import lease; it expires in an hour");
    }
    result
}

fn jiff_like_rfc3339(secs: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}

async fn import_all(
    archive: &Archive,
    index: &OciIndex,
    s: &Session,
    opts: &ImportOptions,
) -> Result<Vec<ImportedImage>, ImportError> {
    let mut imported = Vec::new();
    for entry in &index.manifests {
        let name = entry
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| entry.annotations.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/') || n.contains(':')))
            .ok_or_else(|| {
                archive.err(format!(
                    "index.json entry {} has no image name (annotation io.containerd.image.name or a full \
                     org.opencontainers.image.ref.name)",
                    entry.digest
                ))
            })?;
        let name = normalize_reference(name);
        let manifest = upload_tree(archive, s, entry, opts).await?;
        let target = descriptor(entry);
        let image = Image { name: name.clone(), labels: HashMap::new(), target: Some(target), created_at: None, updated_at: None };
        let mut images = ImagesClient::new(s.channel.clone());
        match images.create(s.req(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None })).await {
            Ok(_) => {}
            Err(st) if st.code() == tonic::Code::AlreadyExists => {
                images
                    .update(s.req(UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None }))
                    .await
                    .map_err(|e| s.err("Images.Update", e))?;
            }
            Err(st) => return Err(s.err("Images.Create", st)),
        }
        if let Some((manifest_desc, manifest)) = manifest {
            unpack(archive, s, &manifest_desc, &manifest, opts).await?;
        }
        imported.push(ImportedImage { name, digest: entry.digest.clone() });
    }
    Ok(imported)
}

fn descriptor(d: &OciDescriptor) -> Descriptor {
    Descriptor { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, annotations: HashMap::new() }
}

/// Uploads an index or manifest and everything under it; returns the
/// manifest for this node's platform.
async fn upload_tree(
    archive: &Archive,
    s: &Session,
    root: &OciDescriptor,
    opts: &ImportOptions,
) -> Result<Option<(OciDescriptor, OciManifest)>, ImportError> {
    let root_member = Archive::blob_member(&root.digest);
    if INDEX_TYPES.contains(&root.media_type.as_str()) {
        let index: OciIndex = archive.read_json(&root_member)?;
        let mut labels = HashMap::new();
        let mut chosen = None;
        for (i, m) in index.manifests.iter().enumerate() {
            if !archive.members.contains_key(&Archive::blob_member(&m.digest)) {
                continue; // other platforms are often left out of an export
            }
            labels.insert(format!("containerd.io/gc.ref.content.m.{i}"), m.digest.clone());
            let manifest = upload_manifest(archive, s, m).await?;
            let matches = m.platform.as_ref().is_none_or(|p| p.os == opts.os && p.architecture == opts.arch);
            if matches && chosen.is_none() {
                chosen = Some((m.clone(), manifest));
            }
        }
        upload_blob(archive, s, root, labels).await?;
        if chosen.is_none() {
            return Err(archive.err(format!("{} has no manifest for {}/{}", root.digest, opts.os, opts.arch)));
        }
        Ok(chosen)
    } else {
        let manifest = upload_manifest(archive, s, root).await?;
        Ok(Some((root.clone(), manifest)))
    }
}

async fn upload_manifest(archive: &Archive, s: &Session, desc: &OciDescriptor) -> Result<OciManifest, ImportError> {
    let manifest: OciManifest = archive.read_json(&Archive::blob_member(&desc.digest))?;
    let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_string(), manifest.config.digest.clone())]);
    for (i, l) in manifest.layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        upload_blob(archive, s, l, HashMap::new()).await?;
    }
    upload_blob(archive, s, &manifest.config, HashMap::new()).await?;
    upload_blob(archive, s, desc, labels).await?;
    Ok(manifest)
}

/// Writes one blob to the content store unless it is there already; either
/// way its labels end up set.
async fn upload_blob(
    archive: &Archive,
    s: &Session,
    desc: &OciDescriptor,
    labels: HashMap<String, String>,
) -> Result<(), ImportError> {
    let mut content = ContentClient::new(s.channel.clone());
    if content.info(s.req(InfoRequest { digest: desc.digest.clone() })).await.is_ok() {
        if !labels.is_empty() {
            set_labels(s, &desc.digest, labels).await?;
        }
        return Ok(());
    }
    let member = Archive::blob_member(&desc.digest);
    let (pos, size) = *archive.members.get(&member).ok_or_else(|| archive.err(format!("{member} is missing")))?;
    if size as i64 != desc.size {
        return Err(archive.err(format!("{member} is {size} bytes but its descriptor says {}", desc.size)));
    }
    // A blocking reader feeds the request stream a chunk at a time, so a
    // large layer never sits in memory whole.
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
    let path = archive.path.clone();
    let reference = format!("nodelet-import-{}", desc.digest);
    let expected = desc.digest.clone();
    let commit_labels = labels.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(pos))?;
        let mut offset: u64 = 0;
        loop {
            let want = CHUNK.min((size - offset) as usize);
            let mut data = vec![0u8; want];
            file.read_exact(&mut data)?;
            let last = offset + want as u64 == size;
            let req = WriteContentRequest {
                action: if last { WriteAction::Commit } else { WriteAction::Write } as i32,
                r#ref: reference.clone(),
                total: size as i64,
                expected: expected.clone(),
                offset: offset as i64,
                data,
                labels: if last { commit_labels.clone() } else { HashMap::new() },
            };
            if tx.blocking_send(req).is_err() {
                return Ok(()); // the call failed; its error is reported below
            }
            offset += want as u64;
            if last {
                return Ok(());
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = match content.write(s.req(stream)).await {
        Ok(r) => r.into_inner(),
        Err(st) if st.code() == tonic::Code::AlreadyExists => return set_labels(s, &desc.digest, labels).await,
        Err(st) => return Err(s.err("Content.Write", st)),
    };
    loop {
        match responses.message().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(st) if st.code() == tonic::Code::AlreadyExists => return set_labels(s, &desc.digest, labels).await,
            Err(st) => return Err(s.err("Content.Write", st)),
        }
    }
    match reader.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(archive.err(format!("{member}: {e}"))),
        Err(e) => Err(archive.err(format!("{member}: {e}"))),
    }
}

async fn set_labels(s: &Session, digest: &str, labels: HashMap<String, String>) -> Result<(), ImportError> {
    if labels.is_empty() {
        return Ok(());
    }
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let info = containerd_client::services::v1::Info {
        digest: digest.to_string(),
        size: 0,
        created_at: None,
        updated_at: None,
        labels,
    };
    ContentClient::new(s.channel.clone())
        .update(s.req(UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths }) }))
        .await
        .map_err(|e| s.err("Content.Update", e))?;
    Ok(())
}

/// Applies each layer into a committed snapshot named by its chain ID, as
/// containerd's unpacker does, skipping layers already unpacked.
async fn unpack(
    archive: &Archive,
    s: &Session,
    manifest_desc: &OciDescriptor,
    manifest: &OciManifest,
    opts: &ImportOptions,
) -> Result<(), ImportError> {
    let config: OciConfig = archive.read_json(&Archive::blob_member(&manifest.config.digest))?;
    let diff_ids = &config.rootfs.diff_ids;
    if diff_ids.len() != manifest.layers.len() {
        return Err(archive.err(format!(
            "manifest {} has {} layers but its config lists {} diff_ids",
            manifest_desc.digest,
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    let chains = chain_ids(diff_ids);
    let mut snapshots = SnapshotsClient::new(s.channel.clone());
    let mut diff = DiffClient::new(s.channel.clone());
    for (i, layer) in manifest.layers.iter().enumerate() {
        let chain = &chains[i];
        let stat = StatSnapshotRequest { snapshotter: opts.snapshotter.clone(), key: chain.clone() };
        if snapshots.stat(s.req(stat)).await.is_ok() {
            continue;
        }
        let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
        let key = format!("extract-{}-{chain}", UnixNanos::now().0);
        let prepared = snapshots
            .prepare(s.req(PrepareSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            }))
            .await
            .map_err(|e| s.err("Snapshots.Prepare", e))?
            .into_inner();
        let applied = diff
            .apply(s.req(ApplyRequest {
                diff: Some(descriptor(layer)),
                mounts: prepared.mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await;
        let failure = match applied {
            Err(e) => Some(s.err("Diff.Apply", e)),
            Ok(r) => {
                let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                (got != diff_ids[i]).then(|| {
                    archive.err(format!("layer {} unpacked to {got}, but the config says {}", layer.digest, diff_ids[i]))
                })
            }
        };
        if let Some(err) = failure {
            let rm = RemoveSnapshotRequest { snapshotter: opts.snapshotter.clone(), key: key.clone() };
            let _ = snapshots.remove(s.req(rm)).await;
            return Err(err);
        }
        snapshots
            .commit(s.req(CommitSnapshotRequest {
                snapshotter: opts.snapshotter.clone(),
                name: chain.clone(),
                key,
                labels: HashMap::new(),
            }))
            .await
            .map_err(|e| s.err("Snapshots.Commit", e))?;
        set_labels(s, &layer.digest, HashMap::from([("containerd.io/uncompressed".to_string(), diff_ids[i].clone())]))
            .await?;
    }
    if let Some(top) = chains.last() {
        let label = format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter);
        set_labels(s, &manifest.config.digest, HashMap::from([(label, top.clone())])).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
