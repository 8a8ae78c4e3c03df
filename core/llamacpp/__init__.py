"""The llama.cpp binding: model and context handles (`handles`), its log (`log`), the AMX crash
probe (`probe`), the RPC backend (`rpc`), and Ctrl-C/SIGTERM inside llama.cpp (`interrupt`)."""
