// A small kustomize for the tests: renders a kustomization directory the way
// `kubectl apply -k DIR` would, for the subset of kustomize that
// deploy/kubernetes uses, and refuses every field outside that subset (so a
// manifest cannot silently rely on something this renderer ignores):
//   resources (files and directories), components (kind Component),
//   namespace, labels (pairs, includeTemplates), images (newName, newTag,
//   digest), configMapGenerator and secretGenerator (files "key=path" or
//   "path", literals "k=v", type, options.labels/annotations/
//   disableNameSuffixHash), generatorOptions of the same.
// Generated names get a content-hash suffix, as with kustomize (a
// sha256 of the object, 10 characters; kustomize's own characters differ),
// and every reference to them in pod templates is rewritten (volumes,
// projected volumes, env and envFrom, imagePullSecrets), which is what makes
// an edit of sluice.json roll the pods.
// render(dir) -> {documents: [object], problems: [string]}.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";

const TOP_FIELDS = new Set(["apiVersion", "kind", "resources", "components", "namespace", "labels",
    "images", "configMapGenerator", "secretGenerator", "generatorOptions"]);
const GEN_FIELDS = new Set(["name", "files", "literals", "type", "options"]);
const OPT_FIELDS = new Set(["labels", "annotations", "disableNameSuffixHash"]);
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding",
    "CustomResourceDefinition", "PersistentVolume", "StorageClass", "PriorityClass"]);
const WORKLOADS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]);

class RenderError extends Error {}

function fail(where, msg) {
    throw new RenderError(`${where}: ${msg}`);
}

function readYamlAll(file) {
    const docs = [];
    for (const d of YAML.parseAllDocuments(fs.readFileSync(file, "utf8"))) {
        if (d.errors.length) fail(file, `YAML: ${d.errors[0].message}`);
        const o = d.toJS();
        if (o !== null) docs.push(o);
    }
    return docs;
}

// The pod spec of a workload (or a CronJob's job template), else null.
function podSpec(doc) {
    if (doc.kind === "Pod") return doc.spec || null;
    if (WORKLOADS.has(doc.kind)) return doc.spec?.template?.spec || null;
    if (doc.kind === "CronJob") return doc.spec?.jobTemplate?.spec?.template?.spec || null;
    return null;
}

function podTemplateMeta(doc) {
    if (WORKLOADS.has(doc.kind)) return (doc.spec.template.metadata ||= {});
    return null;
}

function containers(spec) {
    return [...(spec.containers || []), ...(spec.initContainers || [])];
}

// Rewrite references to ConfigMaps and Secrets: renames = {ConfigMap: Map, Secret: Map}.
function fixReferences(doc, renames) {
    const spec = podSpec(doc);
    if (!spec) return;
    const cm = (o, k) => { if (o && renames.ConfigMap.has(o[k])) o[k] = renames.ConfigMap.get(o[k]); };
    const sec = (o, k) => { if (o && renames.Secret.has(o[k])) o[k] = renames.Secret.get(o[k]); };
    for (const v of spec.volumes || []) {
        cm(v.configMap, "name");
        sec(v.secret, "secretName");
        for (const s of v.projected?.sources || []) {
            cm(s.configMap, "name");
            sec(s.secret, "name");
        }
    }
    for (const c of containers(spec)) {
        for (const e of c.env || []) {
            cm(e.valueFrom?.configMapKeyRef, "name");
            sec(e.valueFrom?.secretKeyRef, "name");
        }
        for (const e of c.envFrom || []) {
            cm(e.configMapRef, "name");
            sec(e.secretRef, "name");
        }
    }
    for (const s of spec.imagePullSecrets || []) sec(s, "name");
}

function checkFields(obj, allowed, where) {
    for (const k of Object.keys(obj || {})) {
        if (!allowed.has(k)) fail(where, `${k}: not supported by this renderer`);
    }
}

function generate(dir, gen, kind, globalOpts, where) {
    checkFields(gen, GEN_FIELDS, where);
    checkFields(gen.options, OPT_FIELDS, `${where}.options`);
    if (!gen.name) fail(where, "name is required");
    if (gen.type && kind !== "Secret") fail(where, "type: only for secretGenerator");
    const data = {};
    for (const f of gen.files || []) {
        const [key, rel] = f.includes("=") ? f.split("=", 2) : [path.basename(f), f];
        const file = path.join(dir, rel);
        if (!fs.existsSync(file)) fail(where, `file ${rel} does not exist (in ${dir})`);
        if (key in data) fail(where, `key ${key} given twice`);
        data[key] = fs.readFileSync(file, "utf8");
    }
    for (const l of gen.literals || []) {
        const i = l.indexOf("=");
        if (i <= 0) fail(where, `literal ${l}: not KEY=VALUE`);
        data[l.slice(0, i)] = l.slice(i + 1);
    }
    const opts = { ...(globalOpts || {}), ...(gen.options || {}) };
    const doc = { apiVersion: "v1", kind, metadata: { name: gen.name } };
    if (opts.labels) doc.metadata.labels = { ...opts.labels };
    if (opts.annotations) doc.metadata.annotations = { ...opts.annotations };
    if (kind === "Secret") {
        doc.type = gen.type || "Opaque";
        doc.data = Object.fromEntries(Object.entries(data).map(
            ([k, v]) => [k, Buffer.from(v).toString("base64")]));
    } else {
        doc.data = data;
    }
    let rename = null;
    if (!opts.disableNameSuffixHash) {
        const h = crypto.createHash("sha256")
            .update(JSON.stringify({ kind, name: gen.name, type: doc.type, data: doc.data }))
            .digest("hex").slice(0, 10);
        doc.metadata.name = `${gen.name}-${h}`;
        rename = [gen.name, doc.metadata.name];
    }
    return { doc, rename };
}

function applyTransformers(k, docs, where) {
    for (const l of k.labels || []) {
        checkFields(l, new Set(["pairs", "includeTemplates"]), `${where}.labels`);
        for (const d of docs) {
            d.metadata.labels = { ...(d.metadata.labels || {}), ...l.pairs };
            const tm = l.includeTemplates ? podTemplateMeta(d) : null;
            if (tm) tm.labels = { ...(tm.labels || {}), ...l.pairs };
        }
    }
    for (const img of k.images || []) {
        checkFields(img, new Set(["name", "newName", "newTag", "digest"]), `${where}.images`);
        for (const d of docs) {
            const spec = podSpec(d);
            if (!spec) continue;
            for (const c of containers(spec)) {
                const m = /^([^@]+?)(?::([^:/@]+))?(?:@(.+))?$/.exec(c.image || "");
                if (!m || m[1] !== img.name) continue;
                const name = img.newName || m[1];
                if (img.digest) c.image = `${name}@${img.digest}`;
                else c.image = `${name}:${img.newTag || m[2] || "latest"}`;
            }
        }
    }
    if (k.namespace) {
        for (const d of docs) {
            if (!CLUSTER_SCOPED.has(d.kind)) d.metadata.namespace = k.namespace;
        }
    }
}

// The documents of one kustomization (or component) directory.
function build(dir, expectKind, problems, stack) {
    const file = path.join(dir, "kustomization.yaml");
    if (!fs.existsSync(file)) fail(dir, "no kustomization.yaml");
    if (stack.includes(dir)) fail(dir, "a cycle of resources");
    const [k] = readYamlAll(file);
    checkFields(k, TOP_FIELDS, file);
    const want = expectKind === "Component"
        ? ["kustomize.config.k8s.io/v1alpha1", "Component"]
        : ["kustomize.config.k8s.io/v1beta1", "Kustomization"];
    if (k.apiVersion !== want[0] || k.kind !== want[1]) {
        fail(file, `must be ${want[0]} ${want[1]}, is ${k.apiVersion} ${k.kind}`);
    }
    // Every other YAML file beside it is one of its resources.
    const listed = new Set(k.resources || []);
    for (const f of fs.readdirSync(dir)) {
        if (/\.ya?ml$/.test(f) && f !== "kustomization.yaml" && !listed.has(f)) {
            problems.push(`${file}: ${f} is not listed in resources`);
        }
    }
    let docs = [];
    for (const r of k.resources || []) {
        const p = path.join(dir, r);
        if (!fs.existsSync(p)) fail(file, `resource ${r} does not exist`);
        if (fs.statSync(p).isDirectory()) docs.push(...build(p, "Kustomization", problems, [...stack, dir]));
        else docs.push(...readYamlAll(p));
    }
    const renames = { ConfigMap: new Map(), Secret: new Map() };
    const gens = [["configMapGenerator", "ConfigMap"], ["secretGenerator", "Secret"]];
    for (const [field, kind] of gens) {
        for (const [i, g] of (k[field] || []).entries()) {
            const { doc, rename } = generate(dir, g, kind, k.generatorOptions, `${file}: ${field}[${i}]`);
            docs.push(doc);
            if (rename) renames[kind].set(...rename);
        }
    }
    for (const c of k.components || []) {
        const p = path.join(dir, c);
        if (!fs.existsSync(p)) fail(file, `component ${c} does not exist`);
        docs = applyComponent(p, docs, problems, [...stack, dir]);
    }
    applyTransformers(k, docs, file);
    for (const d of docs) fixReferences(d, renames);
    return docs;
}

// A component adds its resources and generated objects, then its
// transformers apply to everything so far.
function applyComponent(dir, docs, problems, stack) {
    const own = build(dir, "Component", problems, stack);
    const all = [...docs, ...own];
    const [k] = readYamlAll(path.join(dir, "kustomization.yaml"));
    applyTransformers({ labels: k.labels, images: k.images, namespace: k.namespace }, docs, dir);
    // References from the resources so far to what the component generated.
    const renames = { ConfigMap: new Map(), Secret: new Map() };
    for (const d of own) {
        for (const kind of ["ConfigMap", "Secret"]) {
            if (d.kind !== kind) continue;
            const m = /^(.*)-[0-9a-f]{10}$/.exec(d.metadata.name);
            if (m) renames[kind].set(m[1], d.metadata.name);
        }
    }
    for (const d of all) fixReferences(d, renames);
    return all;
}

export function render(dir) {
    const problems = [];
    let documents = [];
    try {
        documents = build(path.resolve(dir), "Kustomization", problems, []);
    } catch (e) {
        if (!(e instanceof RenderError)) throw e;
        problems.push(e.message);
    }
    const seen = new Set();
    for (const d of documents) {
        const id = `${d.kind}/${d.metadata?.namespace || ""}/${d.metadata?.name}`;
        if (seen.has(id)) problems.push(`${dir}: ${d.kind}/${d.metadata?.name} defined twice`);
        seen.add(id);
    }
    return { documents, problems };
}
