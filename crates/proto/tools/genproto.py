#!/usr/bin/env python3
"""Writes the message definitions of crates/proto/protos/ from the field facts in
../shared/reference/proto-fields.md (names, numbers, types, labels, oneofs, enums, read off Google's published
client descriptors). Only messages reachable from the methods we serve are written. Run it again when the
facts change; the services and HTTP bindings live in the hand-written service.proto files. AlloyDB v1beta and
v1alpha are derived from v1 at build time (build.rs).

usage: genproto.py FACTS_MD OUT_DIR
"""
import re
import sys
from collections import OrderedDict, defaultdict
from pathlib import Path

PACKAGES = [
    "google.cloud.alloydb.connectors.v1",
    "google.cloud.alloydb.v1",
    "google.cloud.edgecontainer.v1",
    "google.cloud.gkemulticloud.v1",
]
ROOTS = {
    "google.cloud.alloydb.v1": [
        "GenerateClientCertificateRequest", "GenerateClientCertificateResponse", "GetConnectionInfoRequest",
        "ConnectionInfo", "Cluster", "Instance", "CreateClusterRequest", "GetClusterRequest",
        "ListClustersRequest", "ListClustersResponse", "DeleteClusterRequest", "CreateInstanceRequest",
        "GetInstanceRequest", "ListInstancesRequest", "ListInstancesResponse", "DeleteInstanceRequest",
        "OperationMetadata",
    ],
    "google.cloud.alloydb.connectors.v1": ["MetadataExchangeRequest", "MetadataExchangeResponse"],
    "google.cloud.edgecontainer.v1": [
        "GenerateOfflineCredentialRequest", "GenerateOfflineCredentialResponse", "Cluster", "CreateClusterRequest",
        "GetClusterRequest", "ListClustersRequest", "ListClustersResponse", "DeleteClusterRequest",
        "OperationMetadata",
    ],
    "google.cloud.gkemulticloud.v1": [
        "GenerateAttachedClusterAgentTokenRequest", "GenerateAttachedClusterAgentTokenResponse", "AttachedCluster",
        "CreateAttachedClusterRequest", "GetAttachedClusterRequest", "ListAttachedClustersRequest",
        "ListAttachedClustersResponse", "DeleteAttachedClusterRequest", "OperationMetadata",
    ],
}
# Options the descriptors we read do not carry (google-apis.md): the agent-token response's documented JSON.
JSON_NAMES = {
    "google.cloud.gkemulticloud.v1.GenerateAttachedClusterAgentTokenResponse": {
        "access_token": "access_token", "expires_in": "expires_in", "token_type": "token_type",
    },
}
SCALARS = {"string", "bool", "bytes", "int32", "int64", "uint32", "uint64", "double", "float", "sint32",
           "sint64", "fixed32", "fixed64"}
IMPORTS = {
    "google.protobuf.Timestamp": "google/protobuf/timestamp.proto",
    "google.protobuf.Duration": "google/protobuf/duration.proto",
    "google.protobuf.Any": "google/protobuf/any.proto",
    "google.protobuf.Struct": "google/protobuf/struct.proto",
    "google.protobuf.Empty": "google/protobuf/empty.proto",
    "google.type.TimeOfDay": "google/type/timeofday.proto",
    "google.type.DayOfWeek": "google/type/dayofweek.proto",
    "google.type.Date": "google/type/date.proto",
    "google.rpc.Status": "google/rpc/status.proto",
}


def parse(md):
    messages, enums = OrderedDict(), OrderedDict()
    current = None
    for line in md.splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            messages.setdefault(current, [])
        elif line.startswith("enum ") and ":" in line:
            name, values = line[5:].split(":", 1)
            enums[name.strip()] = [v.strip().split("=") for v in values.split(",") if v.strip()]
        elif current and line.startswith("| ") and not line.startswith("| field") and "---" not in line:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4:
                field, number, typ, label = cells
                messages[current].append((field, int(number), typ, label))
    return messages, enums


def type_refs(typ):
    typ = typ.removeprefix("enum ")
    m = re.match(r"map<\s*(\S+),\s*(\S+)\s*>", typ)
    return [m.group(2)] if m else [typ]


def reachable(messages, enums, package, roots):
    seen, todo = set(), [f"{package}.{r}" for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for _, _, typ, _ in messages.get(name, []):
            for ref in type_refs(typ):
                if ref.startswith(package + ".") and (ref in messages or ref in enums):
                    todo.append(ref)
                # A nested type's enclosing messages must exist too.
        parts = name[len(package) + 1:].split(".")
        for i in range(1, len(parts)):
            todo.append(f"{package}.{'.'.join(parts[:i])}")
    return seen


def render_type(typ):
    typ = typ.removeprefix("enum ")
    m = re.match(r"map<\s*(\S+),\s*(\S+)\s*>", typ)
    if m:
        value = m.group(2)
        return f"map<{m.group(1)}, {value if value in SCALARS else '.' + value}>"
    return typ if typ in SCALARS else "." + typ


def render(package, messages, enums, keep):
    tree = defaultdict(list)  # parent path -> children names
    for name in sorted(keep, key=lambda n: (n.count("."), n)):
        rel = name[len(package) + 1:]
        parent = rel.rsplit(".", 1)[0] if "." in rel else ""
        tree[parent].append(rel)
    imports = set()
    out = []
    defined = {f"{package}.{rel}" for rels in tree.values() for rel in rels}

    def emit(rel, indent):
        full = f"{package}.{rel}"
        pad = "  " * indent
        short = rel.rsplit(".", 1)[-1]
        if full in enums:
            out.append(f"{pad}enum {short} {{")
            for value, number in enums[full]:
                out.append(f"{pad}  {value} = {number};")
            out.append(f"{pad}}}")
            return
        out.append(f"{pad}message {short} {{")
        for child in tree.get(rel, []):
            emit(child, indent + 1)
        oneofs = OrderedDict()
        plain = []
        for field, number, typ, label in messages.get(full, []):
            refs = type_refs(typ)
            unknown = [r for r in refs if r not in SCALARS and r not in IMPORTS and r not in defined]
            if unknown:
                # The facts name a type they do not define: leave the field out rather than guess its shape.
                out.append(f"{pad}  // {field} = {number}: type {unknown[0]} not in the facts, left out")
                continue
            for ref in type_refs(typ):
                if ref in IMPORTS:
                    imports.add(IMPORTS[ref])
            if label.startswith("oneof _"):
                plain.append((field, number, typ, "optional"))
            elif label.startswith("oneof "):
                oneofs.setdefault(label[6:], []).append((field, number, typ))
            else:
                plain.append((field, number, typ, label))
        json_names = JSON_NAMES.get(full, {})
        for group, fields in oneofs.items():
            out.append(f"{pad}  oneof {group} {{")
            for field, number, typ in fields:
                out.append(f"{pad}    {render_type(typ)} {field} = {number};")
            out.append(f"{pad}  }}")
        for field, number, typ, label in plain:
            prefix = f"{label} " if label in ("repeated", "optional") else ""
            option = f' [json_name = "{json_names[field]}"]' if field in json_names else ""
            out.append(f"{pad}  {prefix}{render_type(typ)} {field} = {number}{option};")
        out.append(f"{pad}}}")

    for rel in tree[""]:
        emit(rel, 0)
    header = ['// Generated by crates/proto/tools/genproto.py from ../shared/reference/proto-fields.md: do not edit.',
              'syntax = "proto3";', "", f"package {package};", ""]
    header += [f'import "{i}";' for i in sorted(imports)] + [""]
    return "\n".join(header + out) + "\n"


def main():
    facts, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    messages, enums = parse(facts.read_text())
    for package in PACKAGES:
        keep = reachable(messages, enums, package, ROOTS[package])
        missing = sorted(k for k in keep if k not in messages and k not in enums)
        if missing:
            sys.exit(f"no facts for {missing}")
        path = out_dir / package.replace(".", "/") / "resources.proto"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(package, messages, enums, keep))


if __name__ == "__main__":
    main()
