// node validate.mjs FILE.yaml... | --kustomize DIR...: parses each Kubernetes
// manifest (multi-
// document YAML) and checks every document against the Kubernetes API
// schemas of the npm package kubernetes-models (types, required fields,
// enums, formats). Those schemas let unknown fields through, as a lenient
// API server would, so a second pass walks each document along the
// package's TypeScript declarations and reports every field the API does
// not have (what `kubectl apply --validate=strict` refuses): a typo such as
// "readinesProbe" must not pass silently.
// A kustomization.yaml is checked for its resources instead: each exists,
// and every other .yaml beside it is listed. With --kustomize, each DIR is
// rendered as `kubectl apply -k DIR` would (kustomize.mjs: generators,
// components, namespace, labels, images, name references) and every
// document of the result is checked. ServiceMonitor (monitoring.coreos.com)
// is checked against @kubernetes-models/prometheus-operator.
// Prints one JSON object: {"documents": [{file, index, apiVersion, kind,
// name, doc}], "problems": ["file#index kind/name: ..."]}; exit 0 when
// there are no problems, else 1.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { render } from "./kustomize.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MODELS = path.join(HERE, "node_modules");

// ---- the field tree, from the .d.ts files ---------------------------------

const ifaceCache = new Map();

// The props of the first interface declared in a .d.ts file:
// Map(name -> type text), plus the imported names -> their .d.ts files.
function loadIface(file) {
    if (ifaceCache.has(file)) return ifaceCache.get(file);
    let out = null;
    if (fs.existsSync(file)) {
        const text = fs.readFileSync(file, "utf8");
        const imports = new Map();
        for (const m of text.matchAll(/^import \{ ([^}]+) \} from "([^"]+)";$/gm)) {
            for (const name of m[1].split(",").map((s) => s.trim())) {
                imports.set(name, resolveImport(file, m[2]));
            }
        }
        const lines = text.split("\n");
        const start = lines.findIndex((l) => /^export interface I\w+( extends [^{]+)? \{$/.test(l));
        if (start >= 0) {
            const props = new Map();
            if (/ extends .*TypeMeta/.test(lines[start])) {
                props.set("apiVersion", "string");
                props.set("kind", "string");
            }
            for (let i = start + 1; i < lines.length && lines[i] !== "}"; i++) {
                const m = /^ {4}"([^"]+)"\??: (.*)$/.exec(lines[i]);
                if (!m) continue;
                let type = m[2];
                if (type.endsWith("{")) {         // an inline object type, to "    };"
                    while (++i < lines.length && !/^ {4}\}/.test(lines[i])) type += " " + lines[i].trim();
                    type += " }";
                }
                props.set(m[1], type);
            }
            out = { props, imports };
        }
    }
    ifaceCache.set(file, out);
    return out;
}

function resolveImport(from, spec) {
    if (spec.startsWith(".")) return path.resolve(path.dirname(from), spec.replace(/\.js$/, ".d.ts"));
    const parts = spec.split("/");
    const n = spec.startsWith("@") ? 2 : 1;
    return path.join(MODELS, ...parts.slice(0, n), ...parts.slice(n)) + ".d.ts";
}

// Walk value along the type text; report fields the API does not have.
function walkType(value, type, imports, where, problems) {
    if (value === null || typeof value !== "object") return;
    const items = Array.isArray(value) ? value : [value];
    if (/\[key: string\]/.test(type)) {     // a map: check each value
        const valueType = type.replace(/^.*\[key: string\]: /, "");
        for (const [k, v] of Object.entries(value)) walkType(v, valueType, imports, `${where}.${k}`, problems);
        return;
    }
    const names = [...new Set(type.match(/\bI[A-Z]\w*/g) || [])].filter((n) => imports.has(n));
    if (names.length !== 1) return;         // a leaf, or a union the schema pass checks
    const iface = loadIface(imports.get(names[0]));
    if (!iface) return;                     // a type alias (Quantity, IntOrString, …)
    items.forEach((item, i) => walkObject(item, iface, Array.isArray(value) ? `${where}[${i}]` : where, problems));
}

function walkObject(obj, iface, where, problems) {
    if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return;
    for (const [k, v] of Object.entries(obj)) {
        if (!iface.props.has(k)) {
            problems.push(`${where}.${k}: unknown field`);
            continue;
        }
        walkType(v, iface.props.get(k), iface.imports, `${where}.${k}`, problems);
    }
}

// ---- documents ------------------------------------------------------------

function modelPath(apiVersion, kind) {
    const core = path.join(MODELS, "kubernetes-models", apiVersion, kind + ".js");
    const operator = path.join(MODELS, "@kubernetes-models", "prometheus-operator", apiVersion,
                               kind + ".js");
    return fs.existsSync(core) || !apiVersion.startsWith("monitoring.coreos.com/") ? core : operator;
}

async function checkDocument(doc, label, problems) {
    if (doc === null || typeof doc !== "object") {
        problems.push(`${label}: not a mapping`);
        return;
    }
    const { apiVersion, kind } = doc;
    const file = typeof apiVersion === "string" && typeof kind === "string"
        ? modelPath(apiVersion, kind) : null;
    if (!file || !fs.existsSync(file)) {
        problems.push(`${label}: unknown apiVersion/kind ${apiVersion}/${kind}`);
        return;
    }
    const mod = await import(file);
    try {
        new mod[kind](doc).validate();
    } catch (e) {
        problems.push(`${label}: ${e.message}`);
    }
    const iface = loadIface(file.replace(/\.js$/, ".d.ts"));
    const unknown = [];
    walkObject(doc, iface, kind, unknown);
    for (const u of unknown) problems.push(`${label}: ${u}`);
}

function checkKustomization(file, doc, problems) {
    const dir = path.dirname(file);
    const listed = new Set(doc.resources || []);
    for (const r of listed) {
        if (!fs.existsSync(path.join(dir, r))) problems.push(`${file}: resource ${r} does not exist`);
    }
    for (const f of fs.readdirSync(dir)) {
        if (f.endsWith(".yaml") && f !== path.basename(file) && !listed.has(f)) {
            problems.push(`${file}: ${f} is not listed in resources`);
        }
    }
}

const documents = [];
const problems = [];
const args = process.argv.slice(2);
if (args[0] === "--kustomize") {
    for (const dir of args.slice(1)) {
        const out = render(dir);
        problems.push(...out.problems);
        for (const [i, doc] of out.documents.entries()) {
            await checkDocument(doc, `${dir}#${i} ${doc.kind}/${doc.metadata?.name}`, problems);
            documents.push({ file: dir, index: i, apiVersion: doc.apiVersion, kind: doc.kind,
                             name: doc.metadata?.name, doc });
        }
    }
    console.log(JSON.stringify({ documents, problems }));
    process.exit(problems.length ? 1 : 0);
}
for (const file of args) {
    const text = fs.readFileSync(file, "utf8");
    const parsed = YAML.parseAllDocuments(text, { prettyErrors: true });
    for (const [i, d] of parsed.entries()) {
        const label = `${path.basename(file)}#${i}`;
        for (const e of d.errors) problems.push(`${label}: YAML: ${e.message}`);
        if (d.errors.length) continue;
        const doc = d.toJS();
        if (doc === null) continue;                 // an empty document
        if (doc.kind === "Kustomization" || doc.kind === "Component") {
            checkKustomization(file, doc, problems);
        } else {
            await checkDocument(doc, `${label} ${doc.kind}/${doc.metadata?.name}`, problems);
        }
        documents.push({ file: path.basename(file), index: i, apiVersion: doc.apiVersion,
                         kind: doc.kind, name: doc.metadata?.name, doc });
    }
}
console.log(JSON.stringify({ documents, problems }));
process.exit(problems.length ? 1 : 0);
