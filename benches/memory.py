#!/usr/bin/env python3
"""Memory benchmark: the release gateway against the EHR simulators, each in a process of its own, so
only the gateway's memory is measured.

    python3 benches/memory.py                 # builds the release binary, runs every case, checks limits
    python3 benches/memory.py --smoke         # small sizes, debug binary is fine (CI runs this)
    python3 benches/memory.py --binary PATH --cases canvas-create,canvas-content

For each case it prints the payload, the gateway's RSS before, its peak extra RSS during the case (the
kernel's high-water mark, reset before each case through /proc/PID/clear_refs) and its RSS after the case
(after a second of idle). Full runs check the limits of issue 10 and exit 1 when one is broken; smoke runs
check correctness only (every answer, exact bytes back).

Needs Linux (/proc) and Python 3.9+; no packages.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import time

MIB = 1024 * 1024
TOKEN = "demo-token"
CANVAS_PATIENT = "b8dfa97bdcdf4754bcd8197ca78ef0f0"
CANVAS_ENCOUNTER = "eae3c8a5-a129-4960-9715-fc26da30eccc"
ATHENA_PATIENT = "1234"
XC = "http://xcaliber-fhir/structureDefinition/"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def jpeg(size, seed):
    rnd = random.Random(seed)
    body = rnd.randbytes(max(0, size - 14))
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + body[: max(0, size - 14)] + b"\xff\xd9"


def pdf(size, seed):
    head = b"%PDF-1.4\n% memory benchmark\n1 0 obj<<>>stream\n"
    tail = b"\nendstream endobj\ntrailer<<>>\n%%EOF\n"
    rnd = random.Random(seed)
    return head + rnd.randbytes(max(0, size - len(head) - len(tail))) + tail


class Process:
    def __init__(self, args, ready_prefix=None):
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "warn"}
        )
        self.lines = []
        threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()
        if ready_prefix:
            deadline = time.time() + 60
            while not any(l.startswith(ready_prefix) for l in self.lines):
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{args[1:3]} did not start:\n" + "\n".join(self.lines))
                time.sleep(0.05)

    def _drain(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def line(self, prefix):
        return next(l for l in self.lines if l.startswith(prefix))

    def stop(self):
        # SIGINT is Ctrl-C: the commands stop cleanly (and a profiler around them writes its report).
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Gateway:
    def __init__(self, port):
        self.port = port
        self.base = "/organizations/{org}/fhir/4"

    def request(self, method, path, body=None, content_type="application/fhir+json", timeout=300):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, dict(response.getheaders()), data

    def digest(self, path):
        """Streams a response into a hash without keeping it."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        h, n = hashlib.sha256(), 0
        while chunk := response.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
        conn.close()
        return response.status, h.hexdigest(), n


def canvas_media(data, notes=None):
    media = {
        "resourceType": "Media",
        "status": "completed",
        "subject": {"reference": f"Patient/{CANVAS_PATIENT}"},
        "encounter": {"reference": f"Encounter/{CANVAS_ENCOUNTER}"},
        "content": {"contentType": "image/jpeg", "data": base64.b64encode(data).decode(), "title": "benchmark"},
    }
    if notes:
        media["note"] = [{"text": "n"} for _ in range(notes)]
    return json.dumps(media).encode()


def athena_card(data, insurance):
    return json.dumps(
        {
            "resourceType": "Media",
            "status": "completed",
            "subject": {"reference": f"Patient/{ATHENA_PATIENT}"},
            "partOf": [{"reference": f"Coverage/{insurance}"}],
            "content": {"contentType": "image/jpeg", "data": base64.b64encode(data).decode()},
        }
    ).encode()


def athena_document(data):
    return json.dumps(
        {
            "resourceType": "Media",
            "status": "in-progress",
            "subject": {"reference": f"Patient/{ATHENA_PATIENT}"},
            "modality": {
                "coding": [{"system": "https://docs.athenahealth.com/api/documentsubclass", "code": "ADMIN_CONSENT"}]
            },
            "content": {"contentType": "application/pdf", "data": base64.b64encode(data).decode(), "title": "bench"},
        }
    ).encode()


class Bench:
    def __init__(self, args):
        self.args = args
        self.smoke = args.smoke
        self.rows = []
        self.failures = []
        self.work = tempfile.mkdtemp(prefix="ehrgw-membench-")

    def size(self, full_mib, smoke_kib):
        return smoke_kib * 1024 if self.smoke else int(full_mib * MIB)

    def start(self):
        exe = self.args.binary
        sim = self.args.sim_binary or exe
        p = [free_port() for _ in range(5)]
        self.canvas_sim = Process(
            [sim, "sim", "canvas", "--instance", f"127.0.0.1:{p[0]}", "--fhir", f"127.0.0.1:{p[1]}", "--s3",
             f"127.0.0.1:{p[2]}"],
            "demo client credentials",
        )
        self.athena_sim = Process([sim, "sim", "athena", "--listen", f"127.0.0.1:{p[3]}"], "demo client credentials")
        canvas = self.credentials(self.canvas_sim, "Canvas simulator: FHIR base ", "canvas")
        athena = self.credentials(self.athena_sim, "athenahealth simulator: base URL ", "athena")
        config = os.path.join(self.work, "gateway.toml")
        mappings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mappings")
        budget = "" if self.args.budget_mib is None else f"memory_budget_bytes = {self.args.budget_mib * MIB}\n"
        if self.args.body_limit_mib:
            budget += f"body_limit_bytes = {self.args.body_limit_mib * MIB}\n"
        with open(config, "w") as f:
            f.write(
                f'[server]\nlisten = "127.0.0.1:{p[4]}"\nmappings_dir = {json.dumps(os.path.abspath(mappings))}\n'
                f'log_format = "json"\n{budget}'
                f"{canvas}{athena}"
                '[[organizations]]\nid = "org-canvas"\nslug = "demo-canvas"\nname = "Canvas"\nconnection = "canvas"\n'
                'mapping = "canvas"\n'
                '[[organizations]]\nid = "org-athena"\nslug = "demo-athena"\nname = "athena"\nconnection = "athena"\n'
                'mapping = "athena"\n'
                '[[clients]]\nname = "bench"\n'
                f'token_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
                'organizations = ["demo-canvas", "demo-athena"]\n'
            )
        wrap = self.args.wrap.split() if self.args.wrap else []
        self.gateway_proc = Process(wrap + [exe, "serve", "--config", config], "ehr-gateway serving on")
        self.pid = self.gateway_proc.proc.pid
        self.gw = Gateway(p[4])
        self.canvas = "/organizations/demo-canvas/fhir/4"
        self.athena = "/organizations/demo-athena/fhir/4"

    def canvas_direct(self, body):
        """Creates a Media straight in the Canvas simulator, as another app of the practice would."""
        if not hasattr(self, "canvas_token"):
            form = urllib.parse.urlencode(
                {"grant_type": "client_credentials", **self.canvas_creds}
            ).encode()
            host, port = self.canvas_token_url.split("//")[1].split("/")[0].split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/auth/token/", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.canvas_token = json.loads(conn.getresponse().read())["access_token"]
        host, port = self.canvas_fhir_base.split("//")[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=300)
        conn.request("POST", "/Media", body=body, headers={
            "Authorization": f"Bearer {self.canvas_token}", "Content-Type": "application/fhir+json"})
        response = conn.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"the simulator answered {response.status}")

    def credentials(self, sim, prefix, name):
        urls = sim.line(prefix)
        creds = dict(kv.split("=", 1) for kv in sim.line("demo client credentials").split(": ", 1)[1].split())
        words = urls.split()
        base, token = words[words.index("token") - 1], words[-1]
        if name == "canvas":
            self.canvas_creds, self.canvas_token_url, self.canvas_fhir_base = creds, token, base
        secret = os.path.join(self.work, f"{name}.secret")
        with open(secret, "w") as f:
            f.write(creds["client_secret"])
        params = 'params = { practice = "195900" }\n' if name == "athena" else ""
        return (
            f'[connections.{name}]\nehr = "{name}"\nbase_url = "{base}"\ntoken_url = "{token}"\n'
            f'client_id = "{creds["client_id"]}"\nclient_secret = {{ file = {json.dumps(secret)} }}\n{params}'
        )

    def stop(self):
        for p in ("gateway_proc", "canvas_sim", "athena_sim"):
            if hasattr(self, p):
                getattr(self, p).stop()

    def measure(self, name, payload, fn, check=None):
        """Runs `fn` as one case: RSS before, peak extra during, RSS after a second of idle."""
        time.sleep(0.3)
        before = proc_kib(self.pid, "VmRSS")
        reset_peak(self.pid)
        started = time.time()
        try:
            outcome = fn()
        except Exception as e:  # a failed case is reported, the others still run
            outcome = f"FAILED: {e}"
        seconds = time.time() - started
        peak = proc_kib(self.pid, "VmHWM")
        time.sleep(1.0)
        after = proc_kib(self.pid, "VmRSS")
        row = {
            "case": name,
            "payload_mib": payload / MIB,
            "rss_before_mib": before / 1024,
            "peak_extra_mib": max(0, peak - before) / 1024,
            "rss_after_mib": after / 1024,
            "seconds": seconds,
            "outcome": outcome,
        }
        if self.args.wrap:  # RSS under a profiler says nothing about the gateway
            row["peak_extra_mib"] = row["rss_after_mib"] = 0.0
        self.rows.append(row)
        print(
            f"{name:<34} {row['payload_mib']:>9.1f} {row['rss_before_mib']:>10.1f} {row['peak_extra_mib']:>10.1f} "
            f"{row['rss_after_mib']:>9.1f} {seconds:>7.2f}  {outcome}",
            flush=True,
        )
        if isinstance(outcome, str) and outcome.startswith("FAILED"):
            self.failures.append(f"{name}: {outcome}")
        elif check and not self.smoke:
            problem = check(row)
            if problem:
                self.failures.append(f"{name}: {problem}")
        return row

    # ---- the cases ------------------------------------------------------------------------------

    def create(self, base, body, query="", expect=(201,)):
        status, headers, data = self.gw.request("POST", f"{base}/Media{query}", body)
        if status not in expect:
            raise RuntimeError(f"create answered {status}: {data[:300]!r}")
        location = next((v for k, v in headers.items() if k.lower() == "location"), "")
        if status == 201 and not location:
            raise RuntimeError("create answered 201 without a Location")
        return status, location.rsplit("/", 1)[-1], data

    def content_matches(self, base, media_id, expected, query=""):
        status, digest, n = self.gw.digest(f"{base}/Media/{media_id}/$content{query}")
        if status != 200 or digest != hashlib.sha256(expected).hexdigest():
            raise RuntimeError(f"$content answered {status} with {n} bytes that do not match")
        return f"200, {n} bytes, sha256 matches"

    def run(self):
        big = self.size(25, 512)
        medium = self.size(6, 128)
        cases = self.args.cases.split(",") if self.args.cases else None
        want = lambda c: cases is None or c in cases  # noqa: E731
        print(f"{'case':<34} {'payload':>9} {'rss before':>10} {'peak +':>10} {'rss after':>9} {'seconds':>7}  outcome")
        print(f"{'':<34} {'MiB':>9} {'MiB':>10} {'MiB':>10} {'MiB':>9}")

        image = jpeg(big, 1)
        if want("canvas-create") or want("canvas-content"):
            created = {}

            def canvas_create():
                _, created["id"], _ = self.create(self.canvas, canvas_media(image))
                return f"201 {created['id']}"

            self.measure("canvas-create", big, canvas_create, lambda r: self.at_most(r, 3 * big / MIB))
            if created.get("id"):
                self.measure(
                    "canvas-content", big, lambda: self.content_matches(self.canvas, created["id"], image),
                    lambda r: self.at_most(r, big / MIB + 16),
                )
        if want("athena-card") or want("athena-card-content"):
            created = {}

            def athena_card_create():
                _, created["id"], _ = self.create(self.athena, athena_card(image, 5679), "?category=insurance-card")
                return f"201 {created['id']}"

            self.measure("athena-card", big, athena_card_create, lambda r: self.at_most(r, 3 * big / MIB))
            if created.get("id"):
                self.measure(
                    "athena-card-content", big, lambda: self.content_matches(self.athena, created["id"], image),
                    lambda r: self.at_most(r, big / MIB + 16),
                )
        if want("athena-document") or want("athena-document-content"):
            document = pdf(big, 2)
            created = {}

            def athena_document_create():
                _, created["id"], _ = self.create(self.athena, athena_document(document), "?category=admin")
                return f"201 {created['id']}"

            self.measure("athena-document", big, athena_document_create, lambda r: self.at_most(r, 3 * big / MIB))
            if created.get("id"):
                self.measure(
                    "athena-document-content", big,
                    lambda: self.content_matches(self.athena, created["id"], document, "?original=true"),
                    lambda r: self.at_most(r, big / MIB + 16),
                )
        if want("canvas-search-20-large"):
            images = [jpeg(medium, 100 + i) for i in range(20)]
            patient = f"Patient/{CANVAS_PATIENT}"
            for img in images:
                self.create(self.canvas, canvas_media(img))

            def search():
                status, _, data = self.gw.request("GET", f"{self.canvas}/Media?patient={patient}&_count=20")
                bundle = json.loads(data)
                if status != 200 or len(bundle.get("entry", [])) != 20:
                    raise RuntimeError(f"search answered {status} with {len(bundle.get('entry', []))} entries")
                return "200, 20 entries"

            self.measure("canvas-search-20-large", 20 * medium, search, lambda r: self.at_most(r, 64))
        if want("canvas-8-concurrent"):
            budget = self.args.budget_mib

            def concurrent():
                results = []

                def one(i):
                    try:
                        status, headers, _ = self.gw.request(
                            "POST", f"{self.canvas}/Media", canvas_media(jpeg(big, 200 + i))
                        )
                        results.append((status, headers.get("Retry-After")))
                    except Exception as e:
                        results.append((str(e), None))

                threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                ok = sum(1 for s, _ in results if s == 201)
                shed = sum(1 for s, ra in results if s == 503 and ra)
                if ok + shed != 8:
                    raise RuntimeError(f"answers {sorted(str(s) for s, _ in results)}")
                return f"{ok} created, {shed} shed with 503 + Retry-After"

            self.measure(
                "canvas-8-concurrent", 8 * big, concurrent,
                (lambda r: self.peak_at_most(r, budget * 1.25)) if budget else None,
            )
        if want("canvas-100-sequential"):
            count = 10 if self.smoke else 100
            start = proc_kib(self.pid, "VmRSS") / 1024

            def sequential():
                for i in range(count):
                    self.create(self.canvas, canvas_media(jpeg(medium, 300 + i)))
                return f"{count} created"

            self.measure(
                f"canvas-{count}-sequential", count * medium, sequential,
                lambda r: None if r["rss_after_mib"] <= start + 100 else
                f"RSS after {r['rss_after_mib']:.1f} MiB, start {start:.1f} MiB (limit +100)",
            )
        if want("canvas-notes-400k"):
            notes = 40_000 if self.smoke else 400_000
            body = canvas_media(jpeg(1024, 400), notes)

            def many_notes():
                status, _, data = self.gw.request("POST", f"{self.canvas}/Media", body)
                if 400 <= status < 500:
                    issue = json.loads(data)["issue"][0]
                    return f"{status} {issue['code']}: {issue.get('expression', [''])[0]}"
                if status == 201:
                    return "201"
                raise RuntimeError(f"answered {status}: {data[:200]!r}")

            self.measure(
                "canvas-notes-400k", len(body), many_notes,
                lambda r: None if str(r["outcome"]).startswith("4") else self.at_most(r, 3 * len(body) / MIB),
            )
        if want("canvas-20-notes-1000"):
            body = canvas_media(jpeg(1024, 600), 1000)

            def notes_1000():
                statuses = [self.gw.request("POST", f"{self.canvas}/Media", body)[0] for _ in range(20)]
                if set(statuses) != {201}:
                    raise RuntimeError(f"answers {sorted(set(statuses))}")
                return "20 created"

            self.measure("canvas-20-notes-1000", 20 * len(body), notes_1000, lambda r: self.at_most(r, 3 * len(body) / MIB + 8))
        if want("canvas-50-notes-50k"):
            count = 5 if self.smoke else 50
            body = canvas_media(jpeg(1024, 500), 50_000)

            def notes_50k():
                statuses = [self.gw.request("POST", f"{self.canvas}/Media", body)[0] for _ in range(count)]
                # 50,000 notes are over the client limit of 1,000 items in one array: each is refused whole.
                if set(statuses) != {413}:
                    raise RuntimeError(f"answers {sorted(set(statuses))}, not 413 each")
                return f"{count} refused with 413"

            start = {}

            def run_and_keep_start():
                start["rss"] = proc_kib(self.pid, "VmRSS")
                return notes_50k()

            self.measure(
                f"canvas-{count}-notes-50k", count * len(body), run_and_keep_start,
                lambda r: None if (r["rss_after_mib"] - start["rss"] / 1024) < count else
                f"retained {(r['rss_after_mib'] - start['rss'] / 1024):.1f} MiB over {count} creates (limit 1 MiB each)",
            )

        if want("canvas-search-10-notes-400k"):
            notes = 40_000 if self.smoke else 400_000
            body = canvas_media(jpeg(1024, 700), notes)
            # Another app put ten such Media into the EHR; a client pages through the patient's Media
            # (100 a page) until it reaches them.
            for _ in range(10):
                self.canvas_direct(body)

            def search_many_notes():
                url = f"{self.canvas}/Media?patient=Patient/{CANVAS_PATIENT}&_count=100"
                for _ in range(20):
                    status, _, data = self.gw.request("GET", url)
                    page = json.loads(data)
                    issue = page.get("issue", [{}])[0]
                    if status == 502 and issue.get("code") == "too-costly":
                        return "502 too-costly: " + issue["diagnostics"].split("`")[1]
                    nxt = [l["url"] for l in page.get("link", []) if l.get("relation") == "next"]
                    if status != 200 or not nxt:
                        break
                    url = nxt[0].split(f":{self.gw.port}", 1)[1]
                raise RuntimeError(f"answered {status}: {data[:200]!r}")

            self.measure(
                "canvas-search-10-notes-400k", 10 * len(body), search_many_notes,
                lambda r: self.at_most(r, 3 * 10 * len(body) / MIB),
            )

    def at_most(self, row, limit_mib):
        if row["peak_extra_mib"] > limit_mib:
            return f"peak extra {row['peak_extra_mib']:.1f} MiB > {limit_mib:.1f} MiB"
        return None

    def peak_at_most(self, row, limit_mib):
        peak = row["rss_before_mib"] + row["peak_extra_mib"]
        if peak > limit_mib:
            return f"peak RSS {peak:.1f} MiB > {limit_mib:.1f} MiB (budget + 25 %)"
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", help="the ehr-gateway binary (default: build and use target/release)")
    parser.add_argument("--sim-binary", help="run the simulators from this binary (default: --binary)")
    parser.add_argument("--smoke", action="store_true", help="small sizes; check answers and bytes, not memory")
    parser.add_argument("--cases", help="comma-separated case names (default: all)")
    parser.add_argument("--budget-mib", type=int, help="server.memory_budget_bytes for the run, in MiB")
    parser.add_argument("--body-limit-mib", type=int, help="server.body_limit_bytes for the run, in MiB")
    parser.add_argument("--wrap", help="a command to run the gateway under, e.g. 'valgrind --tool=dhat'")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if not args.binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
        args.binary = os.path.join(root, "target", "release", "ehr-gateway")
    bench = Bench(args)
    try:
        bench.start()
        bench.run()
    finally:
        bench.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.rows, f, indent=2)
    if bench.failures:
        print("\nFAILED:\n  " + "\n  ".join(bench.failures))
        sys.exit(1)
    print("\nall cases within limits" if not args.smoke else "\nsmoke run: every answer and every byte as expected")


if __name__ == "__main__":
    main()
