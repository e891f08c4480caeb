terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

# Debian 12 (bookworm), amd64: glommio needs io_uring (kernel >= 5.8); bookworm has 6.1.
data "aws_ami" "debian" {
  most_recent = true
  owners      = ["136693071363"]
  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
}

resource "aws_vpc" "bench" {
  cidr_block           = "10.42.0.0/16"
  enable_dns_hostnames = true
  tags                 = { Name = "fleetlm-bench" }
}

resource "aws_internet_gateway" "bench" {
  vpc_id = aws_vpc.bench.id
}

resource "aws_subnet" "bench" {
  vpc_id                  = aws_vpc.bench.id
  cidr_block              = "10.42.1.0/24"
  availability_zone       = var.availability_zone
  map_public_ip_on_launch = true
}

resource "aws_route_table" "bench" {
  vpc_id = aws_vpc.bench.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.bench.id
  }
}

resource "aws_route_table_association" "bench" {
  subnet_id      = aws_subnet.bench.id
  route_table_id = aws_route_table.bench.id
}

resource "aws_security_group" "bench" {
  name   = "fleetlm-bench"
  vpc_id = aws_vpc.bench.id
  ingress {
    description = "ssh"
    from_port   = 22
    to_port     = 22
    protocol    = "tcp"
    cidr_blocks = [var.ssh_allowed_cidr]
  }
  ingress {
    description = "everything inside the VPC (HTTP 4000, peers 5000+)"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [aws_vpc.bench.cidr_block]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_placement_group" "bench" {
  name     = "fleetlm-bench"
  strategy = "cluster"
}

resource "aws_key_pair" "bench" {
  key_name   = "fleetlm-bench"
  public_key = var.ssh_public_key
}

resource "aws_instance" "server" {
  count                  = var.server_count
  ami                    = data.aws_ami.debian.id
  instance_type          = var.server_instance_type
  subnet_id              = aws_subnet.bench.id
  private_ip             = "10.42.1.${11 + count.index}"
  vpc_security_group_ids = [aws_security_group.bench.id]
  placement_group        = aws_placement_group.bench.id
  key_name               = aws_key_pair.bench.key_name
  root_block_device {
    volume_size = 30
    volume_type = "gp3"
  }
  tags = { Name = "fleetlm-node-${count.index + 1}" }
}

resource "aws_instance" "client" {
  ami                    = data.aws_ami.debian.id
  instance_type          = var.client_instance_type
  subnet_id              = aws_subnet.bench.id
  private_ip             = "10.42.1.100"
  vpc_security_group_ids = [aws_security_group.bench.id]
  placement_group        = aws_placement_group.bench.id
  key_name               = aws_key_pair.bench.key_name
  tags                   = { Name = "fleetlm-k6-client" }
}
