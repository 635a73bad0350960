"""Vision-language models' image side: vision towers, projectors, image inputs."""
