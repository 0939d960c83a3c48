//! Simulated model servers (vLLM, Ollama, TF Serving) that speak the engines' real wire formats.
