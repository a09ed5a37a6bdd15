"""`minimind serve MODEL`: the OpenAI-compatible server (the description is minimind/serve/__init__.py's)."""

from . import docstring_of
from .options import add_model_flags, load_for_inference

DESCRIPTION = docstring_of("minimind.serve")


def add_arguments(p):
    add_model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 for every interface "
                                                       "(default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument("--model_name", default=None, help="the model id clients use (default: MODEL's file or "
                                                      "directory name)")
    p.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: "
                                                   "$MINIMIND_API_KEY if set, else no key)")
    p.add_argument("--max_tokens_limit", type=int, default=1024, help="the most tokens one answer may ask for "
                                                                      "(default: %(default)s)")
    p.add_argument("--max_batch", type=int, default=8, help="the most rows (prompts x n) decoded together "
                                                            "(default: %(default)s)")
    p.add_argument("--max_request_bytes", type=int, default=1 << 20, help="largest request body accepted "
                                                                          "(default: 1 MiB)")
    p.add_argument("--compile", action="store_true", help="decode with torch.compile (compiled at startup, about a "
                                                          "minute on a CPU; faster answers after)")
    p.add_argument("--cors_origin", action="append", default=None, metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. http://localhost:3000, or *) call the API from a browser; "
                        "repeatable (default: none; the built-in chat page needs none)")
    p.add_argument("--tools", default=None, metavar="NAMES",
                   help="the built-in tools the web chat offers the model and runs, comma-separated (default: all "
                        "of calculator, convert_units, days_between, add_days, weekday)")


def main(args):
    from ..infer.chat import completion_reason
    from ..serve.app import served_name
    from ..serve.server import run_server

    model, tokenizer = load_for_inference(args)
    run_server(model, tokenizer, model_name=args.model_name or served_name(args.model), host=args.host,
               port=args.port, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit,
               max_batch=args.max_batch, max_request_bytes=args.max_request_bytes, cors_origins=args.cors_origin,
               compile=args.compile, note=completion_reason(args.model, tokenizer),
               demo_tools=args.tools.split(",") if args.tools else None)
