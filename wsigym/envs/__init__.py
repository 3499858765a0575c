"""wsigym.envs"""
