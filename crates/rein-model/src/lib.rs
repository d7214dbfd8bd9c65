//! Model providers for rein behind one Provider trait: scripted, OpenAI Chat Completions, Anthropic Messages.
