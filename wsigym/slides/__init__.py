"""wsigym.slides"""
