"""`qwythos serve`: an OpenAI-compatible HTTP server over one model and its exact MTP engine.

One job per module, in the order a request meets them:

- `errors`: `APIError`, the OpenAI-style JSON error every refusal becomes;
- `schema`: a request body -> a checked `ChatRequest` / `CompletionRequest` (types, ranges, the
  unsupported options refused by name), OpenAI messages -> the chat template's messages;
- `images`: `image_url` data URLs -> checked picture bytes (remote URLs refused);
- `slot`: one generation at a time on a worker thread, a bounded queue, cancellation;
- `runner`: what one request runs on the worker (render, tokenize, generate, parse);
- `backend`: the adapter, the only module that calls the runtime's Engine / ChatSession /
  load_model (so a change of the runtime's API is a change here alone);
- `shapes`: replies and stream chunks in OpenAI's JSON shapes;
- `app`: the starlette routes, API key, CORS, body limits and error handlers;
- `launch`: the uvicorn server around them, draining on Ctrl-C / SIGTERM.
"""
