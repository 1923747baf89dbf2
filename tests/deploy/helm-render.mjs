// node helm-render.mjs CHART_DIR [--set-json JSON] [--release NAME] [--namespace NS]
// Renders deploy/helm/sluice for the tests, as `helm template` would, with
// no helm binary (not in Debian) and no maintained npm package that renders
// Helm charts. It is NOT Helm: it implements the subset of Go templates and
// Sprig that the chart uses, and refuses everything else, so the chart
// cannot silently depend on something rendered differently here:
//   actions {{ }} with {{- -}} trimming, comments {{/* */}};
//   if / else if / else / end, with / end, define / end, include;
//   .Values.x.y, .Release.Name, .Release.Namespace, .Chart.Name/Version/
//   AppVersion, $ (the root), string and number literals, ( ) sub-pipelines;
//   functions: default, required, quote, toYaml, toJson, nindent, indent,
//   sha256sum, trunc, trimSuffix, printf (%s %d %v), eq, ne, not, and, or,
//   empty, include.
// --set-json merges a JSON object into values.yaml (deeply, as helm does).
// Prints {"documents": [{"template", "doc"}], "error": null | "..."}: one
// entry per non-empty YAML document of each templates/*.yaml, in file order.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import YAML from "yaml";

class TemplateError extends Error {}

// ---- lexing and parsing ------------------------------------------------------

function lex(text, file) {
    const out = [];
    let i = 0;
    while (i < text.length) {
        const j = text.indexOf("{{", i);
        if (j < 0) {
            out.push({ t: "text", v: text.slice(i) });
            break;
        }
        out.push({ t: "text", v: text.slice(i, j) });
        const k = text.indexOf("}}", j);
        if (k < 0) throw new TemplateError(`${file}: unclosed action`);
        let body = text.slice(j + 2, k);
        const trimL = body.startsWith("- ") || body === "-";
        const trimR = body.endsWith(" -");
        if (trimL) body = body.slice(1);
        if (trimR) body = body.slice(0, -1);
        out.push({ t: "action", v: body.trim(), trimL, trimR });
        i = k + 2;
    }
    for (let n = 0; n < out.length; n++) {
        if (out[n].t !== "action") continue;
        if (out[n].trimL && n > 0) out[n - 1].v = out[n - 1].v.replace(/\s+$/, "");
        if (out[n].trimR && n + 1 < out.length) out[n + 1].v = out[n + 1].v.replace(/^\s+/, "");
    }
    return out.filter((x) => !(x.t === "action" && x.v.startsWith("/*") && x.v.endsWith("*/")));
}

// Nodes: {text}, {expr}, {if: [[cond, body]...], else}, {with: expr, body, else}.
function parse(tokens, file, defines) {
    let pos = 0;
    function block(stops) {
        const body = [];
        while (pos < tokens.length) {
            const tk = tokens[pos];
            if (tk.t === "text") {
                body.push({ text: tk.v });
                pos++;
                continue;
            }
            const word = tk.v.split(/\s+/)[0];
            if (stops.includes(word)) return body;
            pos++;
            if (word === "if") {
                const branches = [[tk.v.slice(2).trim(), null]];
                let els = null;
                branches[0][1] = block(["else", "end"]);
                while (tokens[pos]?.v.startsWith("else")) {
                    const rest = tokens[pos].v.slice(4).trim();
                    pos++;
                    if (rest.startsWith("if ")) {
                        const b = [rest.slice(3).trim(), null];
                        b[1] = block(["else", "end"]);
                        branches.push(b);
                    } else if (rest === "") {
                        els = block(["end"]);
                    } else throw new TemplateError(`${file}: else ${rest}: not supported`);
                }
                expectEnd();
                body.push({ if: branches, else: els });
            } else if (word === "with") {
                const expr = tk.v.slice(4).trim();
                const b = block(["else", "end"]);
                let els = null;
                if (tokens[pos]?.v === "else") {
                    pos++;
                    els = block(["end"]);
                }
                expectEnd();
                body.push({ with: expr, body: b, else: els });
            } else if (word === "define") {
                const m = /^define\s+"([^"]+)"$/.exec(tk.v);
                if (!m) throw new TemplateError(`${file}: bad define: ${tk.v}`);
                defines.set(m[1], block(["end"]));
                expectEnd();
            } else if (["range", "template", "block", "break", "continue"].includes(word) ||
                       /^\$\w+\s*:?=/.test(tk.v)) {
                throw new TemplateError(`${file}: {{ ${tk.v} }}: not supported by this renderer`);
            } else if (["else", "end"].includes(word)) {
                throw new TemplateError(`${file}: unexpected {{ ${word} }}`);
            } else {
                body.push({ expr: tk.v });
            }
        }
        if (stops.length) throw new TemplateError(`${file}: missing {{ end }}`);
        return body;
    }
    function expectEnd() {
        if (tokens[pos]?.v !== "end") throw new TemplateError(`${file}: missing {{ end }}`);
        pos++;
    }
    return block([]);
}

// ---- expressions ---------------------------------------------------------------

function splitWords(s, file) {
    const words = [];
    let i = 0;
    while (i < s.length) {
        if (/\s/.test(s[i])) { i++; continue; }
        if (s[i] === '"') {
            let j = i + 1;
            while (j < s.length && s[j] !== '"') j += s[j] === "\\" ? 2 : 1;
            if (j >= s.length) throw new TemplateError(`${file}: unterminated string in ${s}`);
            words.push({ str: JSON.parse(s.slice(i, j + 1)) });
            i = j + 1;
        } else if (s[i] === "(") {
            let depth = 0, j = i;
            for (; j < s.length; j++) {
                if (s[j] === "(") depth++;
                else if (s[j] === ")" && --depth === 0) break;
            }
            words.push({ sub: s.slice(i + 1, j) });
            i = j + 1;
        } else if (s[i] === "|") {
            words.push({ pipe: true });
            i++;
        } else {
            let j = i;
            while (j < s.length && !/[\s|()]/.test(s[j])) j++;
            words.push({ word: s.slice(i, j) });
            i = j;
        }
    }
    return words;
}

function truthy(v) {
    if (v === null || v === undefined || v === false || v === 0 || v === "") return false;
    if (Array.isArray(v)) return v.length > 0;
    if (typeof v === "object") return Object.keys(v).length > 0;
    return true;
}

function toYaml(v) {
    if (v === null || v === undefined) return "null";
    return YAML.stringify(v, { lineWidth: 0 }).replace(/\n$/, "");
}

function indentLines(n, s) {
    const pad = " ".repeat(n);
    return String(s).split("\n").map((l) => pad + l).join("\n");
}

function goString(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "object") throw new TemplateError(`cannot print ${JSON.stringify(v)} as text`);
    return String(v);
}

function makeFuncs(ctx) {
    return {
        default: (d, v) => (truthy(v) ? v : d),
        required: (msg, v) => {
            if (v === null || v === undefined || v === "") throw new TemplateError(msg);
            return v;
        },
        quote: (v) => JSON.stringify(goString(v)),
        toYaml,
        toJson: (v) => JSON.stringify(v ?? null),
        nindent: (n, s) => "\n" + indentLines(n, s),
        indent: (n, s) => indentLines(n, s),
        sha256sum: (s) => crypto.createHash("sha256").update(goString(s)).digest("hex"),
        trunc: (n, s) => goString(s).slice(0, n),
        trimSuffix: (suf, s) => (goString(s).endsWith(suf) ? goString(s).slice(0, -suf.length) : goString(s)),
        printf: (fmt, ...args) => {
            let i = 0;
            return fmt.replace(/%[sdv%]/g, (m) => (m === "%%" ? "%" : goString(args[i++])));
        },
        eq: (a, b) => a === b,
        ne: (a, b) => a !== b,
        not: (v) => !truthy(v),
        and: (...v) => v.every(truthy),
        or: (...v) => v.some(truthy),
        empty: (v) => !truthy(v),
        include: (name, dot) => {
            if (!ctx.defines.has(name)) throw new TemplateError(`include: no template "${name}"`);
            return run(ctx.defines.get(name), dot, ctx);
        },
    };
}

function field(obj, pathText, ctx) {
    let v = obj;
    for (const k of pathText.split(".").filter(Boolean)) {
        if (v === null || v === undefined) return undefined;
        if (typeof v !== "object") throw new TemplateError(`${pathText}: ${k} of a non-object`);
        v = v[k];
    }
    return v;
}

function evalPipeline(text, dot, ctx) {
    const words = splitWords(text, ctx.file);
    const cmds = [[]];
    for (const w of words) {
        if (w.pipe) cmds.push([]);
        else cmds[cmds.length - 1].push(w);
    }
    let value;
    cmds.forEach((cmd, n) => {
        if (!cmd.length) throw new TemplateError(`${ctx.file}: empty command in ${text}`);
        const args = cmd.slice(1).map((w) => operand(w, dot, ctx));
        if (n > 0) args.push(value);
        const head = cmd[0];
        if (head.word && ctx.funcs[head.word]) {
            value = ctx.funcs[head.word](...args);
        } else if (head.word && /^[a-z]\w*$/.test(head.word)) {
            throw new TemplateError(`${ctx.file}: function ${head.word}: not supported by this renderer`);
        } else {
            if (args.length) throw new TemplateError(`${ctx.file}: ${text}: arguments to a value`);
            value = operand(head, dot, ctx);
        }
    });
    return value;
}

function operand(w, dot, ctx) {
    if ("str" in w) return w.str;
    if ("sub" in w) return evalPipeline(w.sub, dot, ctx);
    const s = w.word;
    if (/^-?\d+(\.\d+)?$/.test(s)) return Number(s);
    if (s === "true" || s === "false") return s === "true";
    if (s === ".") return dot;
    if (s === "$") return ctx.root;
    if (s.startsWith("$.")) return field(ctx.root, s.slice(2), ctx);
    if (s.startsWith(".")) return field(dot, s.slice(1), ctx);
    if (ctx.funcs[s]) return ctx.funcs[s]();
    throw new TemplateError(`${ctx.file}: ${s}: not supported by this renderer`);
}

function run(nodes, dot, ctx) {
    let out = "";
    for (const n of nodes) {
        if ("text" in n) out += n.text;
        else if ("expr" in n) out += goString(evalPipeline(n.expr, dot, ctx));
        else if ("if" in n) {
            const hit = n.if.find(([cond]) => truthy(evalPipeline(cond, dot, ctx)));
            if (hit) out += run(hit[1], dot, ctx);
            else if (n.else) out += run(n.else, dot, ctx);
        } else if ("with" in n) {
            const v = evalPipeline(n.with, dot, ctx);
            if (truthy(v)) out += run(n.body, v, ctx);
            else if (n.else) out += run(n.else, dot, ctx);
        }
    }
    return out;
}

// ---- the chart -------------------------------------------------------------------

function merge(a, b) {
    if (b === null || typeof b !== "object" || Array.isArray(b) ||
        a === null || typeof a !== "object" || Array.isArray(a)) return b;
    const out = { ...a };
    for (const [k, v] of Object.entries(b)) out[k] = k in a ? merge(a[k], v) : v;
    return out;
}

export function renderChart(dir, overrides = {}, release = "sluice", namespace = "default") {
    const chart = YAML.parse(fs.readFileSync(path.join(dir, "Chart.yaml"), "utf8"));
    const values = merge(YAML.parse(fs.readFileSync(path.join(dir, "values.yaml"), "utf8")) || {},
                         overrides);
    const root = {
        Values: values,
        Release: { Name: release, Namespace: namespace, Service: "Helm" },
        Chart: { Name: chart.name, Version: chart.version, AppVersion: chart.appVersion },
    };
    const ctx = { root, defines: new Map(), file: "" };
    ctx.funcs = makeFuncs(ctx);
    const tdir = path.join(dir, "templates");
    const files = fs.readdirSync(tdir).sort();
    const parsed = [];
    for (const f of files) {
        ctx.file = f;
        const nodes = parse(lex(fs.readFileSync(path.join(tdir, f), "utf8"), f), f, ctx.defines);
        if (f.endsWith(".yaml")) parsed.push([f, nodes]);
        else if (!f.endsWith(".tpl") && f !== "NOTES.txt") throw new TemplateError(`${f}: unexpected file`);
    }
    const documents = [];
    for (const [f, nodes] of parsed) {
        ctx.file = f;
        const text = run(nodes, root, ctx);
        for (const d of YAML.parseAllDocuments(text)) {
            if (d.errors.length) throw new TemplateError(`${f}: rendered YAML: ${d.errors[0].message}\n${text}`);
            const doc = d.toJS();
            if (doc !== null) documents.push({ template: f, doc });
        }
    }
    return documents;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
    const args = process.argv.slice(2);
    let overrides = {}, release = "sluice", namespace = "default";
    const dir = args.shift();
    while (args.length) {
        const a = args.shift();
        if (a === "--set-json") overrides = merge(overrides, JSON.parse(args.shift()));
        else if (a === "--release") release = args.shift();
        else if (a === "--namespace") namespace = args.shift();
        else throw new Error(`unknown argument ${a}`);
    }
    try {
        console.log(JSON.stringify({ documents: renderChart(dir, overrides, release, namespace), error: null }));
    } catch (e) {
        if (!(e instanceof TemplateError)) throw e;
        console.log(JSON.stringify({ documents: [], error: e.message }));
        process.exit(1);
    }
}
