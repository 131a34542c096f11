"""The local GCS emulator the gs:// tests run: gcp-storage-emulator's CLI with two fixes that bring it closer to GCS.

- Object downloads carry the generation headers real GCS sends (`x-goog-generation`, `x-goog-metageneration`):
  tensorstore (orbax's storage layer) reads an object's generation from them for its conditional writes.
- Connections are accepted by many threads with a deep backlog (requests are still handled one at a time): the
  emulator's single-threaded HTTP/1.0 server with a backlog of 5 drops some of the many parallel connections an
  orbax save opens, and tensorstore then fails now and then with "Malformed StorageGeneration".

    python tests/gcs_emulator.py start --host 127.0.0.1 --port PORT --in-memory --default-bucket BUCKET
"""
from __future__ import annotations

import sys
import threading
from http.server import ThreadingHTTPServer

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects


def download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    except Exception:  # a missing object: the emulator's own handler answers 404
        pass
    return objects.download(request, response, storage, *args, **kwargs)


for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
        if handler is objects.download:
            handlers[method] = download_with_generation

class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


_handling = threading.Lock()
_handle = server.Router.handle


def _handle_one_at_a_time(self, method):
    with _handling:  # the emulator's storage is not thread-safe
        return _handle(self, method)


server.Router.handle = _handle_one_at_a_time
server.server.HTTPServer = _Server

if __name__ == "__main__":
    sys.exit(main())
