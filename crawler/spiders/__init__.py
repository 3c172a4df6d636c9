"""Spiders run by Crawlsite workers."""
