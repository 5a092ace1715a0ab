"""A fake ComfyUI that ignores polite ends: it starts a helper child, ignores SIGTERM (POSIX; on
Windows a terminate is TerminateProcess anyway), then answers GET /system_stats on --listen/--port.
Only a kill of the whole tree ends it and its child."""

import argparse
import json
import signal
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--listen", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8188)
args, _unknown = parser.parse_known_args()

IGNORE = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(60)\n"
for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
    sig = getattr(signal, name, None)
    if sig is not None:
        signal.signal(sig, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", IGNORE])
print(f"helper child pid {child.pid}", flush=True)

STATS = json.dumps(
    {
        "system": {"os": "fake", "comfyui_version": "0.3.64", "argv": sys.argv},
        "devices": [{"name": "cpu", "type": "cpu", "index": None}],
    }
).encode()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/system_stats", "/api/system_stats"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(STATS)))
            self.end_headers()
            self.wfile.write(STATS)
        else:
            self.send_error(404)

    def log_message(self, format: str, *a: object) -> None:  # the base class's name
        pass


print("Starting server", flush=True)
ThreadingHTTPServer((args.listen, args.port), Handler).serve_forever()
