"""wsigym.agents"""
