//! Vulkan compute engine for llama-architecture GGUF models.
